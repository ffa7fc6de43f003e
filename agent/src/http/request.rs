//! The requests the front door takes, parsed from JSON by hand so that every refusal names its
//! field and value: a field the API does not know, a sampling parameter other than greedy's, a
//! value out of range.

use serde_json::{Map, Value};

use emoe_core::echo::echo;
use emoe_core::engine::MAX_TOP_LOGPROBS;
use emoe_core::tokenizer::ChatMessage;

use super::error::ApiError;

/// Stop strings a request may give (OpenAI's limit).
pub const MAX_STOPS: usize = 4;
/// Bytes of one stop string at most.
pub const MAX_STOP_BYTES: usize = 256;
/// Chat messages in one request at most.
pub const MAX_MESSAGES: usize = 4096;

/// A prompt as given: text to tokenize, or token ids.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

/// What both endpoints share, checked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Params {
    pub model: Option<String>,
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// Log-probabilities with each token: the chosen one's and this many alternatives.
    pub logprobs: Option<u8>,
    /// Generate past the end-of-sequence token (vLLM's extension, for benchmarks).
    pub ignore_eos: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    pub prompt: Prompt,
    pub params: Params,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Chat {
    pub messages: Vec<ChatMessage>,
    pub params: Params,
}

/// Fields both endpoints know, then each one's own.
const COMMON: &[&str] = &[
    "model",
    "max_tokens",
    "stop",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "n",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "seed",
    "logit_bias",
    "user",
    "ignore_eos",
    "logprobs",
];
const COMPLETION: &[&str] = &["prompt", "echo", "suffix", "best_of"];
const CHAT: &[&str] = &["messages", "top_logprobs", "max_completion_tokens"];

fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            super::error::Kind::BadRequest,
            format!("the body is not JSON: {e}"),
        )
    })?;
    match v {
        Value::Object(m) => Ok(m),
        other => Err(ApiError::new(
            super::error::Kind::BadRequest,
            format!("the body must be a JSON object, not {}", kind_of(&other)),
        )),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A value quoted for a message, bounded.
fn shown(v: &Value) -> String {
    echo(&v.to_string())
}

fn refuse_unknown(m: &Map<String, Value>, own: &[&str]) -> Result<(), ApiError> {
    for k in m.keys() {
        if !COMMON.contains(&k.as_str()) && !own.contains(&k.as_str()) {
            let why = match k.as_str() {
                "tools" | "tool_choice" | "functions" | "function_call" | "parallel_tool_calls" => {
                    "tool calls are not served"
                }
                "response_format" | "guided_json" | "guided_regex" => {
                    "structured output is not served"
                }
                _ => "not a field this endpoint takes",
            };
            return Err(ApiError::field(k, format!("{}: {why}", echo(k))));
        }
    }
    Ok(())
}

fn bool_field(m: &Map<String, Value>, k: &str) -> Result<Option<bool>, ApiError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(ApiError::field(
            k,
            format!("{k} {}: must be true or false", shown(v)),
        )),
    }
}

fn number(m: &Map<String, Value>, k: &str) -> Result<Option<f64>, ApiError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(v) => Err(ApiError::field(
            k,
            format!("{k} {}: must be a number", shown(v)),
        )),
    }
}

fn integer(m: &Map<String, Value>, k: &str, lo: i64, hi: i64) -> Result<Option<i64>, ApiError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(i) if (lo..=hi).contains(&i) => Ok(Some(i)),
            _ => Err(ApiError::field(
                k,
                format!("{k} {}: must be an integer in {lo}..={hi}", shown(v)),
            )),
        },
    }
}

/// Greedy decoding is what the engine does: a sampling parameter is taken only at the value
/// that means greedy (or "off"), and refused naming it otherwise.
fn greedy_only(m: &Map<String, Value>) -> Result<(), ApiError> {
    let rules: [(&str, &[f64], &str); 8] = [
        ("temperature", &[0.0], "0 (greedy)"),
        ("top_p", &[1.0], "1"),
        ("top_k", &[-1.0, 0.0], "-1 or 0 (off)"),
        ("min_p", &[0.0], "0"),
        ("presence_penalty", &[0.0], "0"),
        ("frequency_penalty", &[0.0], "0"),
        ("repetition_penalty", &[1.0], "1"),
        ("n", &[1.0], "1"),
    ];
    for (k, ok, want) in rules {
        if let Some(v) = number(m, k)?
            && !ok.contains(&v)
        {
            return Err(ApiError::field(
                k,
                format!(
                    "{k} {v}: only greedy decoding is served, so {k} must be {want} or left out \
                     (sampling is not implemented)"
                ),
            ));
        }
    }
    if let Some(v) = number(m, "best_of")?
        && v != 1.0
    {
        return Err(ApiError::field(
            "best_of",
            format!("best_of {v}: one answer per request; best_of must be 1"),
        ));
    }
    match m.get("logit_bias") {
        None | Some(Value::Null) => {}
        Some(Value::Object(o)) if o.is_empty() => {}
        Some(v) => {
            return Err(ApiError::field(
                "logit_bias",
                format!("logit_bias {}: not served (greedy decoding only)", shown(v)),
            ));
        }
    }
    // A seed changes nothing in greedy decoding: taken and ignored.
    integer(m, "seed", i64::MIN, i64::MAX)?;
    match m.get("user") {
        None | Some(Value::Null | Value::String(_)) => Ok(()),
        Some(v) => Err(ApiError::field(
            "user",
            format!("user {}: must be a string", shown(v)),
        )),
    }
}

fn stops(m: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let list: Vec<&Value> = match m.get("stop") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(v @ Value::String(_)) => vec![v],
        Some(Value::Array(a)) => a.iter().collect(),
        Some(v) => {
            return Err(ApiError::field(
                "stop",
                format!("stop {}: must be a string or a list of strings", shown(v)),
            ));
        }
    };
    if list.len() > MAX_STOPS {
        return Err(ApiError::field(
            "stop",
            format!(
                "stop: {} strings given, at most {MAX_STOPS} are taken",
                list.len()
            ),
        ));
    }
    list.into_iter()
        .map(|v| match v {
            Value::String(s) if !s.is_empty() && s.len() <= MAX_STOP_BYTES => Ok(s.clone()),
            v => Err(ApiError::field(
                "stop",
                format!(
                    "stop {}: each stop must be a non-empty string of at most \
                     {MAX_STOP_BYTES} bytes",
                    shown(v)
                ),
            )),
        })
        .collect()
}

fn params(m: &Map<String, Value>, chat: bool) -> Result<Params, ApiError> {
    greedy_only(m)?;
    let model = match m.get("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v) => {
            return Err(ApiError::field(
                "model",
                format!("model {}: must be a string", shown(v)),
            ));
        }
    };
    let mut max_tokens = integer(m, "max_tokens", 1, i64::from(u32::MAX))?;
    if chat && let Some(v) = integer(m, "max_completion_tokens", 1, i64::from(u32::MAX))? {
        max_tokens = Some(v);
    }
    let stream = bool_field(m, "stream")?.unwrap_or(false);
    let include_usage = match m.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => {
            if let Some(k) = o.keys().find(|k| *k != "include_usage") {
                return Err(ApiError::field(
                    "stream_options",
                    format!("stream_options.{}: only include_usage is taken", echo(k)),
                ));
            }
            if !stream {
                return Err(ApiError::field(
                    "stream_options",
                    "stream_options is only for streaming requests (stream: true)",
                ));
            }
            bool_field(o, "include_usage")
                .map_err(|e| e.param("stream_options.include_usage"))?
                .unwrap_or(false)
        }
        Some(v) => {
            return Err(ApiError::field(
                "stream_options",
                format!("stream_options {}: must be an object", shown(v)),
            ));
        }
    };
    let top = i64::from(MAX_TOP_LOGPROBS);
    let logprobs = if chat {
        let on = bool_field(m, "logprobs")?.unwrap_or(false);
        let n = integer(m, "top_logprobs", 0, top)?;
        match (on, n) {
            (false, Some(n)) if n > 0 => {
                return Err(ApiError::field(
                    "top_logprobs",
                    format!("top_logprobs {n}: needs logprobs: true"),
                ));
            }
            (true, n) => Some(n.unwrap_or(0) as u8),
            _ => None,
        }
    } else {
        integer(m, "logprobs", 0, top)?.map(|n| n as u8)
    };
    Ok(Params {
        model,
        max_tokens: max_tokens.map(|v| v as u32),
        stop: stops(m)?,
        stream,
        include_usage,
        logprobs,
        ignore_eos: bool_field(m, "ignore_eos")?.unwrap_or(false),
    })
}

fn token_ids(a: &[Value], field: &str) -> Result<Vec<u32>, ApiError> {
    a.iter()
        .map(|v| {
            v.as_u64()
                .and_then(|t| u32::try_from(t).ok())
                .ok_or_else(|| {
                    ApiError::field(
                        field,
                        format!("{field}: token id {} is not an unsigned integer", shown(v)),
                    )
                })
        })
        .collect()
}

/// `POST /v1/completions`.
pub fn completion(body: &[u8]) -> Result<Completion, ApiError> {
    let m = object(body)?;
    refuse_unknown(&m, COMPLETION)?;
    let params = params(&m, false)?;
    if bool_field(&m, "echo")? == Some(true) {
        return Err(ApiError::field(
            "echo",
            "echo true: the prompt is not echoed back; leave echo out or false",
        ));
    }
    match m.get("suffix") {
        None | Some(Value::Null) => {}
        Some(v) => {
            return Err(ApiError::field(
                "suffix",
                format!("suffix {}: insertion is not served", shown(v)),
            ));
        }
    }
    let one = "prompt: one prompt per request (a string, or a list of token ids)";
    let prompt = match m.get("prompt") {
        None | Some(Value::Null) => return Err(ApiError::field("prompt", "prompt is required")),
        Some(Value::String(s)) => Prompt::Text(s.clone()),
        Some(Value::Array(a)) => match a.as_slice() {
            [] => return Err(ApiError::field("prompt", "prompt is empty")),
            [Value::String(s)] => Prompt::Text(s.clone()),
            [Value::Array(ids)] => Prompt::Tokens(token_ids(ids, "prompt")?),
            [Value::String(_) | Value::Array(_), ..] => {
                return Err(ApiError::field("prompt", one));
            }
            ids => Prompt::Tokens(token_ids(ids, "prompt")?),
        },
        Some(v) => {
            return Err(ApiError::field(
                "prompt",
                format!("prompt {}: {one}", shown(v)),
            ));
        }
    };
    Ok(Completion { prompt, params })
}

/// `POST /v1/chat/completions`.
pub fn chat(body: &[u8]) -> Result<Chat, ApiError> {
    let m = object(body)?;
    refuse_unknown(&m, CHAT)?;
    let params = params(&m, true)?;
    let Some(Value::Array(list)) = m.get("messages") else {
        return Err(ApiError::field(
            "messages",
            "messages is required: a list of {role, content}",
        ));
    };
    if list.is_empty() || list.len() > MAX_MESSAGES {
        return Err(ApiError::field(
            "messages",
            format!(
                "messages: {} given, 1 to {MAX_MESSAGES} are taken",
                list.len()
            ),
        ));
    }
    let messages = list
        .iter()
        .enumerate()
        .map(|(i, v)| message(i, v))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Chat { messages, params })
}

fn message(i: usize, v: &Value) -> Result<ChatMessage, ApiError> {
    let at = format!("messages[{i}]");
    let Value::Object(o) = v else {
        return Err(ApiError::field(
            &at,
            format!("{at} {}: must be an object {{role, content}}", shown(v)),
        ));
    };
    if let Some(k) = o
        .keys()
        .find(|k| !["role", "content", "name"].contains(&k.as_str()))
    {
        return Err(ApiError::field(
            &format!("{at}.{k}"),
            format!("{at}.{}: a message has role, content and name", echo(k)),
        ));
    }
    let role = match o.get("role") {
        Some(Value::String(r))
            if ["system", "user", "assistant", "developer"].contains(&r.as_str()) =>
        {
            r.clone()
        }
        Some(v) => {
            return Err(ApiError::field(
                &format!("{at}.role"),
                format!(
                    "{at}.role {}: must be system, user, assistant or developer",
                    shown(v)
                ),
            ));
        }
        None => {
            return Err(ApiError::field(
                &format!("{at}.role"),
                format!("{at}.role is required"),
            ));
        }
    };
    let content = match o.get("content") {
        Some(Value::String(s)) => s.clone(),
        // Content parts: text only.
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, p) in parts.iter().enumerate() {
                match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("text"), Some(Value::String(t))) => text.push_str(t),
                    _ => {
                        return Err(ApiError::field(
                            &format!("{at}.content[{j}]"),
                            format!(
                                "{at}.content[{j}] {}: only {{\"type\": \"text\", \"text\": …}} \
                                 parts are served",
                                shown(p)
                            ),
                        ));
                    }
                }
            }
            text
        }
        Some(v) => {
            return Err(ApiError::field(
                &format!("{at}.content"),
                format!("{at}.content {}: must be a string", shown(v)),
            ));
        }
        None => {
            return Err(ApiError::field(
                &format!("{at}.content"),
                format!("{at}.content is required"),
            ));
        }
    };
    Ok(ChatMessage { role, content })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(body: &str) -> ApiError {
        completion(body.as_bytes()).expect_err(body)
    }

    #[test]
    fn greedy_requests_parse() {
        let c = completion(
            br#"{"model":"m","prompt":"hi","max_tokens":5,"temperature":0,"stop":["\n"],
                "stream":true,"stream_options":{"include_usage":true},"logprobs":2,"seed":7}"#,
        )
        .unwrap();
        assert_eq!(c.prompt, Prompt::Text("hi".into()));
        assert_eq!(c.params.max_tokens, Some(5));
        assert_eq!(c.params.stop, ["\n"]);
        assert!(c.params.stream && c.params.include_usage);
        assert_eq!(c.params.logprobs, Some(2));
        let t = completion(br#"{"prompt":[1,2,3]}"#).unwrap();
        assert_eq!(t.prompt, Prompt::Tokens(vec![1, 2, 3]));
        let t = completion(br#"{"prompt":[[4,5]]}"#).unwrap();
        assert_eq!(t.prompt, Prompt::Tokens(vec![4, 5]));
        let c = chat(
            br#"{"messages":[{"role":"user","content":[{"type":"text","text":"a"}]}],
                "logprobs":true,"top_logprobs":3}"#,
        )
        .unwrap();
        assert_eq!(c.messages[0].content, "a");
        assert_eq!(c.params.logprobs, Some(3));
    }

    #[test]
    fn each_refusal_names_its_field_and_value() {
        for (body, param, says) in [
            (
                r#"{"prompt":"x","temperature":0.7}"#,
                "temperature",
                "temperature 0.7",
            ),
            (r#"{"prompt":"x","top_p":0.9}"#, "top_p", "top_p 0.9"),
            (r#"{"prompt":"x","n":2}"#, "n", "n 2"),
            (
                r#"{"prompt":"x","max_tokens":0}"#,
                "max_tokens",
                "max_tokens 0",
            ),
            (
                r#"{"prompt":"x","max_tokens":"9"}"#,
                "max_tokens",
                "max_tokens \"9\"",
            ),
            (
                r#"{"prompt":"x","stop":["a","b","c","d","e"]}"#,
                "stop",
                "5 strings",
            ),
            (r#"{"prompt":"x","stop":[""]}"#, "stop", "non-empty"),
            (r#"{"prompt":"x","bogus":1}"#, "bogus", "bogus"),
            (r#"{"prompt":"x","tools":[]}"#, "tools", "tool calls"),
            (r#"{"prompt":"x","logprobs":21}"#, "logprobs", "0..=20"),
            (r#"{"prompt":["a","b"]}"#, "prompt", "one prompt"),
            (r#"{"prompt":[1,-2]}"#, "prompt", "token id -2"),
            (r#"{"prompt":"x","echo":true}"#, "echo", "echo"),
            (
                r#"{"prompt":"x","stream_options":{"include_usage":true}}"#,
                "stream_options",
                "streaming",
            ),
            (r#"{}"#, "prompt", "required"),
        ] {
            let e = bad(body);
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {e:?}");
            assert!(e.message.contains(says), "{body}: {}", e.message);
        }
        assert!(bad("[1]").message.contains("JSON object"));
        assert!(bad("{").message.contains("not JSON"));
        let e = chat(br#"{"messages":[{"role":"robot","content":"x"}]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        let e =
            chat(br#"{"messages":[{"role":"user","content":"x"}],"top_logprobs":2}"#).unwrap_err();
        assert!(e.message.contains("needs logprobs"), "{}", e.message);
    }
}
