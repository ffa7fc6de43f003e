//! The OpenAI-compatible front door (`emoe-agent serve --http tcp://HOST:PORT`): completions and
//! chat (streaming as server-sent events), the model list, health, tokenize/detokenize and the
//! metrics, on the agent's tokio runtime. Requests go to the serving node's queue like any other;
//! their token streams travel with them across a switchover, so a client sees nothing of a
//! scaling step.

pub mod client;
mod error;
mod generate;
mod request;
mod response;

pub use error::{ApiError, Kind};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use emoe_core::echo::echo;
use emoe_core::tokenizer::Tokenizer;

use crate::daemon::{Bearer, Daemon};
use crate::serve::{ServeError, Source, Submit};

use generate::{Job, Piece, drive};
use request::{Params, Prompt};

/// Bytes of a request body at most (a prompt of a few hundred thousand tokens).
pub const MAX_BODY: usize = 4 << 20;
/// Tokens a completion generates when `max_tokens` is not given (OpenAI's default).
pub const DEFAULT_COMPLETION_TOKENS: u32 = 16;

/// What the handlers share.
pub struct Front {
    pub daemon: Arc<Daemon>,
    pub tokenizer: Arc<Tokenizer>,
    /// The served model's name (`model` in requests and `/v1/models`).
    pub model: String,
    /// Unix seconds of the start (`created` of the model).
    created: u64,
    next: AtomicU64,
}

impl Front {
    /// The front door of `daemon`, with the tokenizer of its checkpoint.
    pub fn new(daemon: Arc<Daemon>, tokenizer: Tokenizer) -> Arc<Self> {
        let model = daemon.facts.model.clone();
        Arc::new(Self {
            daemon,
            tokenizer: Arc::new(tokenizer),
            model,
            created: unix_now(),
            next: AtomicU64::new(1),
        })
    }

    /// The tokenizer beside the checkpoint `daemon` serves; refused (naming the directory) when
    /// there is none, since the front door answers text.
    pub fn load_tokenizer(daemon: &Daemon) -> Result<Tokenizer, String> {
        let dir = daemon
            .server
            .model_dir()
            .ok_or("the model has no checkpoint directory to read tokenizer.json from")?;
        match Tokenizer::load(&dir) {
            Ok(Some(t)) => Ok(t),
            Ok(None) => Err(format!(
                "{} has no tokenizer.json: the HTTP endpoint answers text and needs the \
                 model's tokenizer",
                dir.display()
            )),
            Err(e) => Err(format!("{}: {e}", dir.display())),
        }
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        self.daemon.access.bearer(headers).map_err(|b| {
            ApiError::new(
                Kind::Unauthorized,
                match b {
                    Bearer::Wrong => "the bearer token does not match the agent's",
                    Bearer::Missing => {
                        "this agent needs `Authorization: Bearer TOKEN` (its --token-file)"
                    }
                },
            )
        })
    }

    /// A refusal as the client gets it (counted for the console).
    fn refuse(&self, e: ApiError) -> Response {
        self.daemon.http_refused.fetch_add(1, Ordering::Relaxed);
        e.into_response()
    }

    fn check_model(&self, p: &Params) -> Result<(), ApiError> {
        match &p.model {
            Some(m) if *m != self.model => Err(ApiError::new(
                Kind::NotFound,
                format!(
                    "model {}: this agent serves {} only",
                    echo(m),
                    echo(&self.model)
                ),
            )
            .param("model")
            .code("model_not_found")),
            _ => Ok(()),
        }
    }

    fn id(&self, prefix: &str) -> String {
        format!(
            "{prefix}-{}-{}",
            self.daemon.incarnation(),
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn vocab(&self) -> u32 {
        self.daemon
            .server
            .active()
            .map_or(u32::MAX, |d| d.model.vocab_size)
    }

    /// Prompt ids: checked against the vocabulary and the context.
    fn check_prompt(&self, ids: &[u32], field: &str) -> Result<(), ApiError> {
        if ids.is_empty() {
            return Err(ApiError::field(
                field,
                format!("{field}: the prompt is empty; a request needs at least one token"),
            ));
        }
        let vocab = self.vocab();
        if let Some(t) = ids.iter().find(|t| **t >= vocab) {
            return Err(ApiError::field(
                field,
                format!("{field}: token id {t} is outside the vocabulary (0..{vocab})"),
            ));
        }
        let max = self.daemon.server.max_request_tokens();
        if ids.len() as u64 >= max {
            return Err(ApiError::new(
                Kind::TooLarge,
                format!(
                    "{field}: the prompt ({} tokens) leaves no room for a generated token; the \
                     context (one replica's KV cache) holds {max}",
                    ids.len()
                ),
            )
            .param(field)
            .code("context_length_exceeded"));
        }
        Ok(())
    }
}

fn too_long(prompt: u64, output: u64, max: u64) -> ApiError {
    ApiError::new(
        Kind::TooLarge,
        format!(
            "the prompt ({prompt} tokens) and max_tokens ({output}) need {} tokens; the context \
             (one replica's KV cache) holds {max}",
            prompt + output
        ),
    )
    .code("context_length_exceeded")
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn body_bytes(body: Body) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::new(
            Kind::TooLarge,
            format!("the request body is over {MAX_BODY} bytes, the limit"),
        )
    })
}

/// The routes, on `front`.
pub fn router(front: Arc<Front>) -> axum::Router {
    axum::Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(not_allowed)
        .with_state(front)
}

async fn not_found(State(f): State<Arc<Front>>, uri: axum::http::Uri) -> Response {
    f.refuse(ApiError::new(
        Kind::NotFound,
        format!("{}: no such endpoint", echo(uri.path())),
    ))
}

async fn not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let e = ApiError::new(
        Kind::BadRequest,
        format!(
            "{method} {}: not a method this endpoint takes",
            echo(uri.path())
        ),
    );
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(e.body())).into_response()
}

async fn health(State(f): State<Arc<Front>>) -> Response {
    if f.daemon.server.active().is_some() {
        StatusCode::OK.into_response()
    } else {
        f.refuse(unavailable())
    }
}

fn unavailable() -> ApiError {
    ApiError::new(
        Kind::Unavailable,
        "no instance is active: a cold restart is reloading the model; retry shortly",
    )
}

async fn models(State(f): State<Arc<Front>>, headers: HeaderMap) -> Response {
    if let Err(e) = f.authorize(&headers) {
        return f.refuse(e);
    }
    axum::Json(serde_json::json!({
        "object": "list",
        "data": [{
            "id": f.model,
            "object": "model",
            "created": f.created,
            "owned_by": "elasticmoe",
            "root": f.model,
            "max_model_len": f.daemon.server.max_request_tokens(),
        }],
    }))
    .into_response()
}

async fn metrics(State(f): State<Arc<Front>>, headers: HeaderMap) -> Response {
    if f.daemon.access.auth_reads
        && let Err(e) = f.authorize(&headers)
    {
        return f.refuse(e);
    }
    crate::daemon::metrics::exposition(Arc::clone(&f.daemon)).await
}

async fn tokenize(State(f): State<Arc<Front>>, headers: HeaderMap, body: Body) -> Response {
    let r = async {
        f.authorize(&headers)?;
        let b = body_bytes(body).await?;
        let v: serde_json::Value = serde_json::from_slice(&b)
            .map_err(|e| ApiError::new(Kind::BadRequest, format!("the body is not JSON: {e}")))?;
        if let Some(m) = v.get("model").and_then(|m| m.as_str()) {
            f.check_model(&Params {
                model: Some(m.into()),
                ..Params::default()
            })?;
        }
        let add = v
            .get("add_special_tokens")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(true);
        let ids = match (v.get("prompt"), v.get("messages")) {
            (Some(serde_json::Value::String(p)), None) => f
                .tokenizer
                .encode(p, add)
                .map_err(|e| ApiError::field("prompt", e.to_string()))?,
            (None, Some(_)) => {
                let c = request::chat(&b)?;
                chat_ids(&f, &c.messages)?
            }
            _ => {
                return Err(ApiError::field(
                    "prompt",
                    "give either prompt (a string) or messages",
                ));
            }
        };
        Ok(axum::Json(serde_json::json!({
            "count": ids.len(),
            "max_model_len": f.daemon.server.max_request_tokens(),
            "tokens": ids,
        }))
        .into_response())
    }
    .await;
    r.unwrap_or_else(|e| f.refuse(e))
}

async fn detokenize(State(f): State<Arc<Front>>, headers: HeaderMap, body: Body) -> Response {
    let r = async {
        f.authorize(&headers)?;
        let b = body_bytes(body).await?;
        let v: serde_json::Value = serde_json::from_slice(&b)
            .map_err(|e| ApiError::new(Kind::BadRequest, format!("the body is not JSON: {e}")))?;
        let Some(serde_json::Value::Array(list)) = v.get("tokens") else {
            return Err(ApiError::field(
                "tokens",
                "tokens is required: a list of ids",
            ));
        };
        let ids = list
            .iter()
            .map(|t| {
                t.as_u64()
                    .and_then(|t| u32::try_from(t).ok())
                    .filter(|t| *t < f.tokenizer.vocab_size())
                    .ok_or_else(|| {
                        ApiError::field(
                            "tokens",
                            format!(
                                "tokens: {} is not a token id of the vocabulary (0..{})",
                                echo(&t.to_string()),
                                f.tokenizer.vocab_size()
                            ),
                        )
                    })
            })
            .collect::<Result<Vec<u32>, _>>()?;
        let text = f
            .tokenizer
            .decode(&ids)
            .map_err(|e| ApiError::field("tokens", e.to_string()))?;
        Ok(axum::Json(serde_json::json!({ "prompt": text })).into_response())
    }
    .await;
    r.unwrap_or_else(|e| f.refuse(e))
}

fn chat_ids(
    f: &Front,
    messages: &[emoe_core::tokenizer::ChatMessage],
) -> Result<Vec<u32>, ApiError> {
    let text = f
        .tokenizer
        .apply_chat_template(messages, true)
        .map_err(|e| ApiError::field("messages", format!("the chat template: {e}")))?;
    // The template writes the special tokens itself.
    f.tokenizer
        .encode(&text, false)
        .map_err(|e| ApiError::field("messages", e.to_string()))
}

/// Which endpoint a generation answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Completion,
    Chat,
}

async fn completions(State(f): State<Arc<Front>>, headers: HeaderMap, body: Body) -> Response {
    let r = async {
        f.authorize(&headers)?;
        let b = body_bytes(body).await?;
        let c = request::completion(&b)?;
        f.check_model(&c.params)?;
        let ids = match &c.prompt {
            Prompt::Text(t) => f
                .tokenizer
                .encode(t, true)
                .map_err(|e| ApiError::field("prompt", e.to_string()))?,
            Prompt::Tokens(ids) => ids.clone(),
        };
        f.check_prompt(&ids, "prompt")?;
        Ok((ids, c.params))
    }
    .await;
    match r {
        Ok((ids, params)) => generate(f, ids, params, Endpoint::Completion).await,
        Err(e) => f.refuse(e),
    }
}

async fn chat(State(f): State<Arc<Front>>, headers: HeaderMap, body: Body) -> Response {
    let r = async {
        f.authorize(&headers)?;
        let b = body_bytes(body).await?;
        let c = request::chat(&b)?;
        f.check_model(&c.params)?;
        let ids = chat_ids(&f, &c.messages)?;
        f.check_prompt(&ids, "messages")?;
        Ok((ids, c.params))
    }
    .await;
    match r {
        Ok((ids, params)) => generate(f, ids, params, Endpoint::Chat).await,
        Err(e) => f.refuse(e),
    }
}

/// Submit the request and answer it: one JSON object, or a stream of events.
async fn generate(f: Arc<Front>, ids: Vec<u32>, p: Params, ep: Endpoint) -> Response {
    let server = Arc::clone(&f.daemon.server);
    if server.active().is_none() {
        return f.refuse(unavailable());
    }
    let max = server.max_request_tokens();
    let prompt_tokens = ids.len() as u64;
    let output = match (p.max_tokens, ep) {
        (Some(n), _) => u64::from(n),
        (None, Endpoint::Completion) => u64::from(DEFAULT_COMPLETION_TOKENS),
        (None, Endpoint::Chat) => max.saturating_sub(prompt_tokens),
    };
    if prompt_tokens + output > max {
        return f.refuse(too_long(prompt_tokens, output, max).param("max_tokens"));
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let stop_tokens = match (p.ignore_eos, f.tokenizer.eos_token_id()) {
        (false, Some(eos)) => vec![eos],
        _ => Vec::new(),
    };
    let submit = Submit {
        prompt: ids,
        output_tokens: output as u32,
        stop_tokens,
        logprobs: p.logprobs,
        sink: Some(tx),
        source: Source::Http,
        resume: None,
    };
    let id = match server.submit(submit) {
        Ok(id) => id,
        Err(e @ ServeError::QueueFull { .. }) => {
            return f.refuse(ApiError::new(Kind::Busy, e.to_string()));
        }
        Err(e @ ServeError::TooLong { .. }) => {
            return f.refuse(
                ApiError::new(Kind::TooLarge, e.to_string()).code("context_length_exceeded"),
            );
        }
        Err(e) => return f.refuse(ApiError::new(Kind::BadRequest, e.to_string())),
    };
    let job = Job { id, rx, server };
    let shape = response::Shape {
        id: f.id(if ep == Endpoint::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        }),
        created: unix_now(),
        model: f.model.clone(),
        chat: ep == Endpoint::Chat,
        logprobs: p.logprobs.is_some(),
        prompt_tokens,
    };
    let tok = Arc::clone(&f.tokenizer);
    if p.stream {
        let (out_tx, out_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let include_usage = p.include_usage;
        tokio::spawn(async move {
            let mut first = true;
            let mut offset = 0usize;
            let generated = drive(job, tok, p.stop, |piece: Piece| {
                let mut ok = true;
                if first && shape.chat {
                    ok &= out_tx.send(shape.role_chunk()).is_ok();
                }
                first = false;
                for c in shape.chunks(&piece, &mut offset, include_usage) {
                    ok &= out_tx.send(c).is_ok();
                }
                ok
            })
            .await;
            if include_usage {
                let _ = out_tx.send(shape.usage_chunk(generated as u64));
            }
            let _ = out_tx.send("[DONE]".into());
        });
        let events = tokio_stream::wrappers::UnboundedReceiverStream::new(out_rx);
        let stream = tokio_stream::StreamExt::map(events, |data| {
            Ok::<_, std::convert::Infallible>(axum::response::sse::Event::default().data(data))
        });
        return axum::response::Sse::new(stream).into_response();
    }
    let mut pieces = Vec::new();
    let generated = drive(job, tok, p.stop, |piece| {
        pieces.push(piece);
        true
    })
    .await;
    if let Some(err) = pieces.iter().find_map(|p| p.error.clone()) {
        return f.refuse(ApiError::new(Kind::Internal, err));
    }
    axum::Json(shape.whole(&pieces, generated as u64)).into_response()
}

/// Serve the front door on `l` until `signal` resolves; the address is published for the
/// console (`Node.http_addr`).
pub async fn serve(
    front: Arc<Front>,
    l: std::net::TcpListener,
    signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    l.set_nonblocking(true)?;
    let addr = l.local_addr()?;
    let _ = front.daemon.http_addr.set(format!("http://{addr}"));
    let l = tokio::net::TcpListener::from_std(l)?;
    axum::serve(l, router(front))
        .with_graceful_shutdown(signal)
        .await
}
