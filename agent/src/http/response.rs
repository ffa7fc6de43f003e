//! The answers in OpenAI's shapes: `text_completion` / `chat.completion` objects, their
//! streaming chunks, log-probabilities and usage.

use serde_json::{Value, json};

use super::generate::{Piece, TokenOut};

/// What every answer of one request carries.
pub struct Shape {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub chat: bool,
    pub logprobs: bool,
    pub prompt_tokens: u64,
}

fn token_bytes(t: &str) -> Vec<u8> {
    t.as_bytes().to_vec()
}

impl Shape {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.chat, chunk) {
            (true, false) => "chat.completion",
            (true, true) => "chat.completion.chunk",
            (false, _) => "text_completion",
        }
    }

    fn usage(&self, generated: u64) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": generated,
            "total_tokens": self.prompt_tokens + generated,
        })
    }

    fn envelope(&self, chunk: bool, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    /// Log-probabilities of `tokens`, in the endpoint's format; `offset` is where the first
    /// token's text starts in the completion (completions' `text_offset`).
    fn logprobs(&self, tokens: &[TokenOut], offset: &mut usize) -> Value {
        if !self.logprobs {
            return Value::Null;
        }
        if self.chat {
            let content: Vec<Value> = tokens
                .iter()
                .map(|t| {
                    let lp = t.logprobs.as_ref();
                    json!({
                        "token": t.text,
                        "logprob": lp.map_or(0.0, |l| l.logprob),
                        "bytes": token_bytes(&t.text),
                        "top_logprobs": lp.map(|l| l.top.iter().map(|(id, v)| {
                            let s = top_text(*id, t);
                            json!({"token": s, "logprob": v, "bytes": token_bytes(&s)})
                        }).collect::<Vec<_>>()).unwrap_or_default(),
                    })
                })
                .collect();
            return json!({ "content": content });
        }
        let mut offsets = Vec::new();
        for t in tokens {
            offsets.push(*offset);
            *offset += t.text.len();
        }
        json!({
            "tokens": tokens.iter().map(|t| t.text.clone()).collect::<Vec<_>>(),
            "token_logprobs": tokens.iter().map(|t| t.logprobs.as_ref().map_or(0.0, |l| l.logprob)).collect::<Vec<_>>(),
            "top_logprobs": tokens.iter().map(|t| {
                let mut m = serde_json::Map::new();
                if let Some(l) = &t.logprobs {
                    for (id, v) in &l.top {
                        m.insert(top_text(*id, t), json!(v));
                    }
                }
                Value::Object(m)
            }).collect::<Vec<_>>(),
            "text_offset": offsets,
        })
    }

    /// The first chunk of a chat stream: the assistant's role.
    pub fn role_chunk(&self) -> String {
        self.envelope(
            true,
            json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
        )
        .to_string()
    }

    /// The chunks of one piece: its text (and log-probabilities), then, when it ends the
    /// answer, a chunk with the finish reason (chat) or the reason on the same chunk
    /// (completions). With `include_usage`, content chunks carry `"usage": null`.
    pub fn chunks(&self, p: &Piece, offset: &mut usize, include_usage: bool) -> Vec<String> {
        if let Some(e) = &p.error {
            let err = super::error::ApiError::new(super::error::Kind::Internal, e.clone());
            return vec![err.body().to_string()];
        }
        let mut out = Vec::new();
        let lp = self.logprobs(&p.tokens, offset);
        let with_usage = |mut v: Value| {
            if include_usage {
                v["usage"] = Value::Null;
            }
            v.to_string()
        };
        if self.chat {
            if !p.text.is_empty() || (self.logprobs && !p.tokens.is_empty()) {
                out.push(with_usage(self.envelope(
                    true,
                    json!([{"index": 0, "delta": {"content": p.text}, "logprobs": lp, "finish_reason": null}]),
                )));
            }
            if let Some(f) = p.finish {
                out.push(with_usage(self.envelope(
                    true,
                    json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": f}]),
                )));
            }
        } else if !p.text.is_empty()
            || p.finish.is_some()
            || (self.logprobs && !p.tokens.is_empty())
        {
            out.push(with_usage(self.envelope(
                true,
                json!([{"index": 0, "text": p.text, "logprobs": lp, "finish_reason": p.finish}]),
            )));
        }
        out
    }

    /// The closing usage chunk of a stream (`stream_options.include_usage`).
    pub fn usage_chunk(&self, generated: u64) -> String {
        let mut v = self.envelope(true, json!([]));
        v["usage"] = self.usage(generated);
        v.to_string()
    }

    /// The whole answer of a request that did not stream.
    pub fn whole(&self, pieces: &[Piece], generated: u64) -> Value {
        let text: String = pieces.iter().map(|p| p.text.as_str()).collect();
        let tokens: Vec<TokenOut> = pieces
            .iter()
            .flat_map(|p| p.tokens.iter().cloned())
            .collect();
        let finish = pieces
            .iter()
            .rev()
            .find_map(|p| p.finish)
            .unwrap_or("length");
        let lp = self.logprobs(&tokens, &mut 0);
        let choice = if self.chat {
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": lp, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": text, "logprobs": lp, "finish_reason": finish})
        };
        let mut v = self.envelope(false, json!([choice]));
        v["usage"] = self.usage(generated);
        v
    }
}

/// The text of an alternative token of `t` (carried in its record).
fn top_text(id: u32, t: &TokenOut) -> String {
    t.top_texts
        .iter()
        .find(|(i, _)| *i == id)
        .map(|(_, s)| s.clone())
        .unwrap_or_default()
}
