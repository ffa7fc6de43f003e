//! Text in, text out: a Hugging Face `tokenizer.json` (the `tokenizers` crate, pure Rust), the
//! chat template of `tokenizer_config.json` (rendered with `minijinja`), streaming
//! detokenization, and a deterministic byte-level tokenizer for the generated presets.
//!
//! Bounds: `tokenizer.json` is read up to [`MAX_TOKENIZER_JSON_BYTES`], `tokenizer_config.json`
//! and `chat_template.jinja` up to [`MAX_TOKENIZER_CONFIG_BYTES`], regular files only
//! ([`crate::fsio`]); [`Tokenizer::encode`] refuses more than [`MAX_ENCODE_BYTES`] of text,
//! [`Tokenizer::apply_chat_template`] more than [`MAX_CHAT_BYTES`] of messages, and a render
//! stops after [`TEMPLATE_FUEL`] fuel.
//!
//! Not checked here: that the tokenizer's ids fit the model. A tokenizer whose
//! [`Tokenizer::vocab_size`] exceeds the model's `vocab_size` could produce ids the embedding
//! has no row for; the caller that pairs the two must refuse that.

mod generate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use minijinja::{Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};
use tokenizers::{DecoderWrapper, Model};

use crate::echo::{bound_words, echo};
use crate::fsio::{self, FsError};

pub use generate::{MAX_GENERATED_VOCAB, MIN_GENERATED_VOCAB, generate_byte_level};

/// The tokenizer file of a model directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Its companion: special tokens and the chat template.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// Where newer Hugging Face checkpoints keep the chat template instead of the config.
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

/// Large real tokenizers (150k-token BPEs) are ~10 MiB; this leaves room and stays bounded.
pub const MAX_TOKENIZER_JSON_BYTES: u64 = 64 << 20;
/// For `tokenizer_config.json` and `chat_template.jinja`.
pub const MAX_TOKENIZER_CONFIG_BYTES: u64 = 4 << 20;
/// Text longer than this is refused by [`Tokenizer::encode`] (far beyond any context length).
pub const MAX_ENCODE_BYTES: usize = 4 << 20;
/// Roles and contents of one [`Tokenizer::apply_chat_template`] call, in bytes.
pub const MAX_CHAT_BYTES: usize = 4 << 20;
/// Fuel of one chat-template render: an instruction costs 1, 64 bytes of data produced cost 1,
/// so this allows about a million instructions or 64 MiB of strings.
pub const TEMPLATE_FUEL: u64 = 1 << 20;
/// Ids above this in a loaded tokenizer are refused (the model side's limit too).
pub const MAX_VOCAB: u32 = crate::model::MAX_VOCAB;
/// Tokens held back by a [`Detokenizer`] waiting for the rest of a UTF-8 sequence; past this
/// (only a stream of broken bytes gets there) the held text is emitted as it decodes.
pub const MAX_HELD_TOKENS: usize = 32;

/// The ChatML template used when the tokenizer has none (and written into generated
/// tokenizers): every message as `<|im_start|>{role}\n{content}<|im_end|>\n`, then
/// `<|im_start|>assistant\n` when a generation prompt is asked for.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// One chat message, as OpenAI requests carry it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// Why a tokenizer could not be loaded or used. Causes are part of the message, not chained.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// Reading a file was refused or failed (the message names the path and the rule).
    #[error("{0}")]
    Read(FsError),
    #[error("{}: not a valid tokenizer: {why}", file.display())]
    Parse { file: PathBuf, why: String },
    #[error("{}: {why}", file.display())]
    Config { file: PathBuf, why: String },
    #[error("{}: chat template does not compile: {why}", file.display())]
    TemplateSyntax { file: PathBuf, why: String },
    #[error("chat template failed: {why}")]
    Template { why: String },
    #[error("{what} is {bytes} bytes, more than the {limit}-byte limit")]
    TooLong {
        what: &'static str,
        bytes: usize,
        limit: usize,
    },
    #[error("token id {id} is not in the tokenizer's vocabulary ({vocab} ids)")]
    UnknownId { id: u32, vocab: u32 },
    #[error("encoding failed: {why}")]
    Encode { why: String },
    #[error("decoding failed: {why}")]
    Decode { why: String },
    #[error(
        "vocab_size {value} is refused: a byte-level tokenizer is generated for {min}..={max} ids (256 bytes and 3 special tokens at least)"
    )]
    VocabSize { value: u32, min: u32, max: u32 },
    #[error("generating a byte-level tokenizer of {vocab_size} ids: {why}")]
    Generate { vocab_size: u32, why: String },
}

/// A loaded tokenizer: cheap to clone (shared), usable from any thread.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<tokenizers::Tokenizer>,
    /// One more than the largest id (model vocabulary and added tokens).
    vocab_size: u32,
    eos: Option<u32>,
    has_template: bool,
    /// Holds the chat template (the tokenizer's or ChatML) as template `chat`.
    env: Arc<Environment<'static>>,
    bos_token: String,
    eos_token: String,
    /// Whether model tokens are GPT-2 byte-level strings (their raw bytes are recoverable).
    byte_level: bool,
}

impl fmt::Debug for Tokenizer {
    // The inner tokenizer would print its whole vocabulary.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("eos_token_id", &self.eos)
            .field("has_chat_template", &self.has_template)
            .field("byte_level", &self.byte_level)
            .finish_non_exhaustive()
    }
}

const CHAT: &str = "chat";

impl Tokenizer {
    /// `dir/tokenizer.json` (and `dir/tokenizer_config.json` when present, and
    /// `dir/chat_template.jinja` when the config has no template); `Ok(None)` when the dir has
    /// no tokenizer.json.
    pub fn load(dir: &Path) -> Result<Option<Self>, TokenizerError> {
        let json_path = dir.join(TOKENIZER_FILE);
        let Some(json) = read_optional(&json_path, MAX_TOKENIZER_JSON_BYTES)? else {
            return Ok(None);
        };
        let config_path = dir.join(TOKENIZER_CONFIG_FILE);
        let config = read_optional(&config_path, MAX_TOKENIZER_CONFIG_BYTES)?;
        let jinja_path = dir.join(CHAT_TEMPLATE_FILE);
        let jinja = || -> Result<Option<String>, TokenizerError> {
            match read_optional(&jinja_path, MAX_TOKENIZER_CONFIG_BYTES)? {
                None => Ok(None),
                Some(b) => String::from_utf8(b)
                    .map(Some)
                    .map_err(|_| TokenizerError::Config {
                        file: jinja_path.clone(),
                        why: "is not valid UTF-8".into(),
                    }),
            }
        };
        Self::build(&json, &json_path, config.as_deref(), &config_path, jinja).map(Some)
    }

    /// From the bytes of a `tokenizer.json` and, optionally, of a `tokenizer_config.json`.
    pub fn from_json(
        tokenizer_json: &[u8],
        config_json: Option<&[u8]>,
    ) -> Result<Self, TokenizerError> {
        Self::build(
            tokenizer_json,
            Path::new(TOKENIZER_FILE),
            config_json,
            Path::new(TOKENIZER_CONFIG_FILE),
            || Ok(None),
        )
    }

    fn build(
        json: &[u8],
        json_path: &Path,
        config: Option<&[u8]>,
        config_path: &Path,
        jinja: impl FnOnce() -> Result<Option<String>, TokenizerError>,
    ) -> Result<Self, TokenizerError> {
        let parse = |why: String| TokenizerError::Parse {
            file: json_path.to_path_buf(),
            why: bound(&why),
        };
        let mut inner =
            tokenizers::Tokenizer::from_bytes(json).map_err(|e| parse(e.to_string()))?;
        // A server never wants a tokenizer.json's truncation or padding applied silently.
        inner
            .with_truncation(None)
            .map_err(|e| parse(e.to_string()))?;
        inner.with_padding(None);
        let max_id = inner.get_vocab(true).into_values().max();
        let vocab_size = match max_id {
            None => return Err(parse("the vocabulary is empty".into())),
            Some(id) if id >= MAX_VOCAB => {
                return Err(parse(format!(
                    "token id {id} is beyond the {MAX_VOCAB}-id limit"
                )));
            }
            Some(id) => id + 1,
        };
        let byte_level = matches!(inner.get_decoder(), Some(DecoderWrapper::ByteLevel(_)));

        let config = match config {
            None => Config::default(),
            Some(bytes) => Config::parse(bytes, config_path)?,
        };
        let eos = match &config.eos_token {
            None => None,
            Some(t) => Some(inner.token_to_id(t).ok_or_else(|| TokenizerError::Config {
                file: config_path.to_path_buf(),
                why: format!(
                    "`eos_token` `{}` is not a token of {}",
                    echo(t),
                    json_path.display()
                ),
            })?),
        };
        let (template, template_file) = match config.chat_template {
            Some(t) => (Some(t), config_path.to_path_buf()),
            None => {
                let file = json_path.with_file_name(CHAT_TEMPLATE_FILE);
                (jinja()?, file)
            }
        };
        let has_template = template.is_some();
        let env =
            template_env(template.unwrap_or_else(|| CHATML_TEMPLATE.to_string())).map_err(|e| {
                TokenizerError::TemplateSyntax {
                    file: template_file,
                    why: bound(&e.to_string()),
                }
            })?;
        Ok(Self {
            inner: Arc::new(inner),
            vocab_size,
            eos,
            has_template,
            env: Arc::new(env),
            bos_token: config.bos_token.unwrap_or_default(),
            eos_token: config.eos_token.unwrap_or_default(),
            byte_level,
        })
    }

    /// Text to ids; `add_special`: add the tokenizer's BOS etc. as its post-processor says.
    /// Special tokens written in `text` are encoded as those tokens. More than
    /// [`MAX_ENCODE_BYTES`] of text is refused.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, TokenizerError> {
        if text.len() > MAX_ENCODE_BYTES {
            return Err(TokenizerError::TooLong {
                what: "text to encode",
                bytes: text.len(),
                limit: MAX_ENCODE_BYTES,
            });
        }
        let enc = self
            .inner
            .encode(text, add_special)
            .map_err(|e| TokenizerError::Encode {
                why: bound(&e.to_string()),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Ids to text, special tokens skipped (what OpenAI servers return). An id at or past
    /// [`Self::vocab_size`] is refused; bytes that are not UTF-8 come out as U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        if let Some(&id) = ids.iter().find(|&&id| id >= self.vocab_size) {
            return Err(TokenizerError::UnknownId {
                id,
                vocab: self.vocab_size,
            });
        }
        self.inner
            .decode(ids, true)
            .map_err(|e| TokenizerError::Decode {
                why: bound(&e.to_string()),
            })
    }

    /// One token's own text (for logprobs' "token" field), special tokens included. A token
    /// whose bytes are not UTF-8 on their own (part of a character) is written as vLLM does,
    /// `bytes:` and each byte as `\xNN` (lowercase hex), e.g. `bytes:\xe2\x80`; that is exact
    /// for byte-level tokenizers and for `<0xNN>` byte-fallback tokens, other tokens come out
    /// as the lossy decoded string. An id outside the vocabulary gives `""`.
    pub fn token_text(&self, id: u32) -> String {
        if id >= self.vocab_size {
            return String::new();
        }
        if let Some(added) = self.inner.get_added_vocabulary().simple_id_to_token(id) {
            return added;
        }
        let Some(token) = self.inner.get_model().id_to_token(id) else {
            return String::new();
        };
        if self.byte_level
            && let Some(bytes) = token.chars().map(byte_of_char).collect::<Option<Vec<u8>>>()
        {
            return match String::from_utf8(bytes) {
                Ok(s) => s,
                Err(e) => bytes_text(e.as_bytes()),
            };
        }
        let text = self.inner.decode(&[id], false).unwrap_or_default();
        if text.contains('\u{FFFD}')
            && let Some(b) = byte_fallback(&token)
        {
            return bytes_text(&[b]);
        }
        text
    }

    /// One more than the largest id: the model vocabulary plus added tokens.
    pub fn vocab_size(&self) -> u32 {
        self.vocab_size
    }

    /// The id of tokenizer_config.json's `eos_token` (a string or `{"content": …}`); `None`
    /// without a config or an `eos_token`.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos
    }

    /// The chat prompt: the chat template (tokenizer_config.json's `chat_template`, else
    /// `chat_template.jinja` beside it) rendered with minijinja, given `messages`,
    /// `add_generation_prompt`, `bos_token`, `eos_token` (`""` when the config names none) and
    /// `raise_exception(msg)`; without a template, [`CHATML_TEMPLATE`]. Like Hugging Face's
    /// renderer: `trim_blocks`, `lstrip_blocks`, Python string methods (`.strip()`, …).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let bytes: usize = messages
            .iter()
            .map(|m| m.role.len() + m.content.len())
            .sum();
        if bytes > MAX_CHAT_BYTES {
            return Err(TokenizerError::TooLong {
                what: "the chat messages",
                bytes,
                limit: MAX_CHAT_BYTES,
            });
        }
        let template_error = |e: minijinja::Error| TokenizerError::Template {
            why: bound(&match e.kind() {
                ErrorKind::OutOfFuel => {
                    format!("{e} (the render is limited to {TEMPLATE_FUEL} fuel)")
                }
                _ => e.to_string(),
            }),
        };
        let template = self.env.get_template(CHAT).map_err(template_error)?;
        template
            .render(minijinja::context! {
                messages => Value::from(minijinja::value::Serde(messages)),
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token.as_str(),
                eos_token => self.eos_token.as_str(),
            })
            .map_err(template_error)
    }

    /// Whether the tokenizer brought its own chat template (otherwise ChatML is used).
    pub fn has_chat_template(&self) -> bool {
        self.has_template
    }
}

/// The minijinja environment of one chat template, set up as Hugging Face renders them.
fn template_env(source: String) -> Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()?,
    );
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_template_owned(CHAT, source)?;
    Ok(env)
}

/// What we use from tokenizer_config.json.
#[derive(Default)]
struct Config {
    eos_token: Option<String>,
    bos_token: Option<String>,
    chat_template: Option<String>,
}

impl Config {
    fn parse(bytes: &[u8], file: &Path) -> Result<Self, TokenizerError> {
        let bad = |why: String| TokenizerError::Config {
            file: file.to_path_buf(),
            why,
        };
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad("is not a JSON object".into()))?;
        let token = |field: &str| -> Result<Option<String>, TokenizerError> {
            match obj.get(field) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(serde_json::Value::Object(o)) => match o.get("content") {
                    Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                    _ => Err(bad(format!(
                        "`{field}` is an object without a string `content`"
                    ))),
                },
                Some(_) => Err(bad(format!(
                    "`{field}` must be a string, an object with `content`, or null"
                ))),
            }
        };
        let chat_template = match obj.get("chat_template") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            // The older form: named templates, of which the `default` one is the chat prompt.
            Some(serde_json::Value::Array(list)) => {
                let default = list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"));
                match default.and_then(|t| t.get("template")) {
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    _ => {
                        return Err(bad(
                            "`chat_template` is a list without a `default` entry with a string `template`".into(),
                        ));
                    }
                }
            }
            Some(_) => {
                return Err(bad(
                    "`chat_template` must be a string, a list of {name, template}, or null".into(),
                ));
            }
        };
        Ok(Self {
            eos_token: token("eos_token")?,
            bos_token: token("bos_token")?,
            chat_template,
        })
    }
}

/// The file's bytes, `None` when nothing is there.
fn read_optional(path: &Path, cap: u64) -> Result<Option<Vec<u8>>, TokenizerError> {
    match fsio::read_regular_capped(path, cap) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(TokenizerError::Read(e)),
    }
}

/// A message from a library or a template, bounded: each long word quoted as `echo` does, and
/// the whole cut at 1000 characters.
fn bound(s: &str) -> String {
    let s = bound_words(s);
    match s.char_indices().nth(1000) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// `bytes:\xNN…`, vLLM's way to show bytes that are not text on their own.
fn bytes_text(bytes: &[u8]) -> String {
    let mut s = String::from("bytes:");
    for b in bytes {
        s.push_str(&format!("\\x{b:02x}"));
    }
    s
}

/// The byte of a `<0xNN>` byte-fallback token.
fn byte_fallback(token: &str) -> Option<u8> {
    let hex = token.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// The byte a GPT-2 byte-level character stands for: printable bytes stand for themselves,
/// the other 68 (0..=32, 127..=160, 173) for U+0100.. in byte order.
fn byte_of_char(c: char) -> Option<u8> {
    let printable = |b: u32| matches!(b, 33..=126 | 161..=172 | 174..=255);
    let code = c as u32;
    if code < 256 {
        return printable(code).then_some(code as u8);
    }
    let n = code.checked_sub(256)?;
    (0u32..256)
        .filter(|&b| !printable(b))
        .nth(n as usize)
        .map(|b| b as u8)
}

/// Streaming detokenization: feed generated ids one by one, get the new text each adds. Text
/// that ends in an incomplete UTF-8 sequence (decoded as a trailing U+FFFD) is held back until
/// completed, at most [`MAX_HELD_TOKENS`] ids; [`Self::finish`] flushes the rest. The
/// prefix/read-offset method: each step decodes the previous piece's ids together with the new
/// ones and emits what goes past the previous piece's text, so decoders that look at
/// neighbouring tokens (leading-space stripping, byte fallback) see the same context as a
/// whole decode. The pieces concatenated equal [`Tokenizer::decode`] of all ids whenever the
/// decoder only appends as ids come (byte-level BPEs always; byte-fallback ones while the byte
/// tokens form valid UTF-8: Hugging Face's ByteFallback replaces a whole run of byte tokens once
/// any byte in it is invalid, which a stream cannot take back after showing a valid prefix).
pub struct Detokenizer<'a> {
    tok: &'a Tokenizer,
    /// The last emitted piece's ids (`ids[..read]`, the context of the next decode), then
    /// the ids not emitted yet; older ids are dropped.
    ids: Vec<u32>,
    read: usize,
}

impl<'a> Detokenizer<'a> {
    pub fn new(t: &'a Tokenizer) -> Self {
        Self {
            tok: t,
            ids: Vec::new(),
            read: 0,
        }
    }

    /// The text `id` completes; `""` while a character is incomplete. An id outside the
    /// vocabulary is refused (and not taken).
    pub fn push(&mut self, id: u32) -> Result<String, TokenizerError> {
        if id >= self.tok.vocab_size {
            return Err(TokenizerError::UnknownId {
                id,
                vocab: self.tok.vocab_size,
            });
        }
        self.ids.push(id);
        self.step(false)
    }

    /// What is still held back; the detokenizer is then empty (pushes go on from there).
    pub fn finish(&mut self) -> Result<String, TokenizerError> {
        let piece = self.step(true)?;
        self.ids.clear();
        self.read = 0;
        Ok(piece)
    }

    fn step(&mut self, force: bool) -> Result<String, TokenizerError> {
        if self.read == self.ids.len() {
            return Ok(String::new());
        }
        let prefix_text = self.tok.decode(&self.ids[..self.read])?;
        let new_text = self.tok.decode(&self.ids)?;
        let held = self.ids.len() - self.read;
        let complete = new_text.len() > prefix_text.len() && !new_text.ends_with('\u{FFFD}');
        if !(complete || force || held >= MAX_HELD_TOKENS) {
            return Ok(String::new());
        }
        let piece = match new_text.strip_prefix(prefix_text.as_str()) {
            Some(rest) => rest.to_string(),
            // A decoder that changed the earlier text: emit from the same byte length on.
            None => {
                let at = (prefix_text.len()..=new_text.len())
                    .find(|&i| new_text.is_char_boundary(i))
                    .unwrap_or(new_text.len());
                new_text[at..].to_string()
            }
        };
        // The new piece's ids become the next prefix.
        self.ids.drain(..self.read);
        self.read = self.ids.len();
        Ok(piece)
    }
}

#[cfg(test)]
mod tests;
