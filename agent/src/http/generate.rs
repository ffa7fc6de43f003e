//! One request's generation as the front door sees it: tokens from the server's stream turned
//! into text pieces (streaming detokenization), stop strings found across piece boundaries, the
//! request aborted (its KV blocks freed) when its client goes away or a stop string ends it.

use std::sync::Arc;

use emoe_core::tokenizer::{Detokenizer, Tokenizer};

use crate::serve::{FinishReason, Server, TokenEvent, TokenLogprobs};

/// A request in the server, ended when dropped: a client that disconnects drops its stream,
/// and with it this, so the request stops and frees its KV blocks at once.
pub struct Job {
    pub id: u64,
    pub rx: tokio::sync::mpsc::UnboundedReceiver<TokenEvent>,
    pub server: Arc<Server>,
}

impl Drop for Job {
    fn drop(&mut self) {
        // False when it finished already: nothing to do.
        let _ = self.server.abort(self.id);
    }
}

/// A generated token as a client sees it.
#[derive(Clone, Debug)]
pub struct TokenOut {
    pub text: String,
    pub logprobs: Option<TokenLogprobs>,
    /// The texts of the alternatives in `logprobs.top`.
    pub top_texts: Vec<(u32, String)>,
}

/// What a step of the generation hands the client: new text, the tokens that made it, and at
/// the end why it finished.
#[derive(Clone, Debug, Default)]
pub struct Piece {
    pub text: String,
    pub tokens: Vec<TokenOut>,
    pub finish: Option<&'static str>,
    /// The request failed mid-way (a failed engine step).
    pub error: Option<String>,
}

/// Stop strings over the text generated so far: what can be sent now, holding back a tail that
/// may still become a stop string.
#[derive(Debug, Default)]
pub struct StopScan {
    stops: Vec<String>,
    text: String,
    sent: usize,
}

impl StopScan {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            ..Self::default()
        }
    }

    /// Add `new` text: the text that can go out now, and whether a stop string was found (the
    /// text ends before it; nothing after it is ever sent).
    pub fn push(&mut self, new: &str) -> (String, bool) {
        self.text.push_str(new);
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut from = self.sent.saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min();
        if let Some(at) = hit {
            let out = self.text[self.sent..at.max(self.sent)].to_string();
            self.sent = self.text.len();
            return (out, true);
        }
        // Hold back the longest tail that is the start of a stop string.
        let hold = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .filter(|l| s.is_char_boundary(*l))
                    .filter(|l| self.text.ends_with(&s[..*l]))
                    .max()
            })
            .max()
            .unwrap_or(0);
        let end = (self.text.len() - hold).max(self.sent);
        let out = self.text[self.sent..end].to_string();
        self.sent = end;
        (out, false)
    }

    /// At the end: the held-back tail (it did not become a stop string).
    pub fn flush(&mut self) -> String {
        let out = self.text[self.sent..].to_string();
        self.sent = self.text.len();
        out
    }
}

/// Run `job` to its end, handing each piece to `emit`; `emit` returns false when the client is
/// gone, which ends the request. Returns the number of tokens generated.
pub async fn drive(
    mut job: Job,
    tok: Arc<Tokenizer>,
    stops: Vec<String>,
    mut emit: impl FnMut(Piece) -> bool,
) -> usize {
    let mut detok = Detokenizer::new(&tok);
    let mut scan = StopScan::new(stops);
    let mut generated = 0;
    let mut pending: Vec<TokenOut> = Vec::new();
    while let Some(ev) = job.rx.recv().await {
        match ev {
            TokenEvent::Token { id, logprobs } => {
                generated += 1;
                let new = match detok.push(id) {
                    Ok(t) => t,
                    Err(e) => {
                        let _ = emit(Piece {
                            error: Some(format!("cannot decode token {id}: {e}")),
                            ..Piece::default()
                        });
                        return generated;
                    }
                };
                let top_texts = logprobs
                    .iter()
                    .flat_map(|l| &l.top)
                    .map(|(t, _)| (*t, tok.token_text(*t)))
                    .collect();
                pending.push(TokenOut {
                    text: tok.token_text(id),
                    logprobs,
                    top_texts,
                });
                let (text, hit) = scan.push(&new);
                if hit {
                    // The stop string ends the answer: the request stops here.
                    let _ = emit(Piece {
                        text,
                        tokens: std::mem::take(&mut pending),
                        finish: Some("stop"),
                        error: None,
                    });
                    return generated;
                }
                // Tokens whose text is held back (an incomplete character, a possible stop
                // string) go out with the text they end up in, unless log-probabilities are
                // wanted per token.
                if !text.is_empty() || pending.iter().any(|t| t.logprobs.is_some()) {
                    let piece = Piece {
                        text,
                        tokens: std::mem::take(&mut pending),
                        ..Piece::default()
                    };
                    if !emit(piece) {
                        return generated;
                    }
                }
            }
            TokenEvent::Finished { reason } => {
                let mut text = detok.finish().unwrap_or_default();
                let (mut out, hit) = scan.push(&text);
                if !hit {
                    out.push_str(&scan.flush());
                }
                text = out;
                let finish = match reason {
                    _ if hit => "stop",
                    FinishReason::Stop => "stop",
                    FinishReason::Length => "length",
                    FinishReason::Aborted => "abort",
                };
                let _ = emit(Piece {
                    text,
                    tokens: std::mem::take(&mut pending),
                    finish: Some(finish),
                    error: None,
                });
                return generated;
            }
            TokenEvent::Failed { message } => {
                let _ = emit(Piece {
                    error: Some(message),
                    ..Piece::default()
                });
                return generated;
            }
        }
    }
    // The server stopped (shutdown) without finishing the request.
    let _ = emit(Piece {
        error: Some("the agent is shutting down: the request was not finished".into()),
        ..Piece::default()
    });
    generated
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut s = StopScan::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let (t, hit) = s.push(p);
            out.push_str(&t);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&s.flush());
        (out, false)
    }

    #[test]
    fn a_stop_string_split_across_pieces_ends_the_text_before_it() {
        assert_eq!(
            run(&["END"], &["ab", "cE", "N", "Dxyz"]),
            ("abc".into(), true)
        );
        assert_eq!(run(&["\n\n"], &["a\n", "b"]), ("a\nb".into(), false));
        assert_eq!(run(&["xy", "b"], &["aab"]), ("aa".into(), true));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(run(&["é!"], &["caf", "é", "!"]), ("caf".into(), true));
    }

    #[test]
    fn held_back_text_goes_out_as_soon_as_it_cannot_be_a_stop() {
        let mut s = StopScan::new(vec!["STOP".into()]);
        assert_eq!(s.push("aST"), ("a".into(), false));
        assert_eq!(s.push("x"), ("STx".into(), false));
    }
}
