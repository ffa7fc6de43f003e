//! A deterministic byte-level BPE for the generated presets: trained with `tokenizers`'
//! `BpeTrainer` on a fixed text (`corpus.txt`, embedded), so a generated checkpoint has real
//! text in and out without any download.
//!
//! Ids: 0 `<|endoftext|>` (the eos), 1 `<|im_start|>`, 2 `<|im_end|>`, then the 256 byte
//! characters, then merges. The fixed text alone gives only so many merges; a larger vocabulary
//! gets pseudo-words from a fixed-seed xoshiro256++ appended (each distinct word ends as one
//! more token), doubled until the trainer reaches the size. Every input is a pure function of
//! `vocab_size` and the trainer's ties are broken by pair ids, so the bytes are the same on
//! every run and machine (a test generates twice and compares).

use rand_xoshiro::Xoshiro256PlusPlus;
use rand_xoshiro::rand_core::{RngCore, SeedableRng};
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    TokenizerBuilder, TokenizerImpl,
};

use super::{CHATML_TEMPLATE, TokenizerError};

/// The 256 byte characters and the 3 special tokens.
pub const MIN_GENERATED_VOCAB: u32 = 256 + 3;
/// Larger vocabularies are refused (training them would take minutes).
pub const MAX_GENERATED_VOCAB: u32 = 1 << 20;

const CORPUS: &str = include_str!("corpus.txt");
/// The fixed text counts this many times, so its merges come before the pseudo-words'.
const CORPUS_WEIGHT: usize = 8;
const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
/// Doublings of the pseudo-word count before giving up (never reached in practice: distinct
/// words give at least one token each).
const MAX_ROUNDS: u32 = 24;

type Trained = TokenizerImpl<
    BPE,
    NormalizerWrapper,
    PreTokenizerWrapper,
    PostProcessorWrapper,
    DecoderWrapper,
>;

/// A byte-level BPE trained (with tokenizers' BpeTrainer) from a fixed text embedded in the
/// crate, to exactly `vocab_size` ids including the special tokens `<|endoftext|>` (eos),
/// `<|im_start|>`, `<|im_end|>`; deterministic: the same bytes every run on every machine.
/// Returns (tokenizer.json bytes, tokenizer_config.json bytes with eos_token and a ChatML
/// `chat_template`). `vocab_size` must be within
/// [`MIN_GENERATED_VOCAB`]`..=`[`MAX_GENERATED_VOCAB`].
pub fn generate_byte_level(vocab_size: u32) -> Result<(Vec<u8>, Vec<u8>), TokenizerError> {
    if !(MIN_GENERATED_VOCAB..=MAX_GENERATED_VOCAB).contains(&vocab_size) {
        return Err(TokenizerError::VocabSize {
            value: vocab_size,
            min: MIN_GENERATED_VOCAB,
            max: MAX_GENERATED_VOCAB,
        });
    }
    let fail = |why: String| TokenizerError::Generate { vocab_size, why };
    let target = vocab_size as usize;
    let needed = target - MIN_GENERATED_VOCAB as usize;
    let mut words = 0usize;
    for _ in 0..MAX_ROUNDS {
        let tok = train(target, words).map_err(|e| fail(e.to_string()))?;
        let got = tok.get_vocab_size(true);
        if got == target {
            let mut json = tok.to_string(true).map_err(|e| fail(e.to_string()))?;
            json.push('\n');
            return Ok((json.into_bytes(), config_json()));
        }
        if got > target {
            return Err(fail(format!("the trainer made {got} ids")));
        }
        words = (words * 2).max(needed);
    }
    Err(fail(format!(
        "the training text gives too few merges even with {words} extra words"
    )))
}

fn train(vocab_size: usize, extra_words: usize) -> tokenizers::Result<Trained> {
    // No prefix space: decode(encode(text)) gives back the text exactly.
    let byte_level = ByteLevel::new(false, true, true);
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(vocab_size)
        .min_frequency(0)
        .special_tokens(
            SPECIAL_TOKENS
                .iter()
                .map(|t| AddedToken::from(*t, true))
                .collect(),
        )
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tok: Trained = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None)
        .with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(byte_level)))
        .with_post_processor(Some(PostProcessorWrapper::ByteLevel(byte_level)))
        .with_decoder(Some(DecoderWrapper::ByteLevel(byte_level)))
        .build()?;
    let mut text: Vec<String> = Vec::new();
    for _ in 0..CORPUS_WEIGHT {
        text.extend(CORPUS.split_inclusive('\n').map(str::to_string));
    }
    text.extend(pseudo_words(extra_words));
    tok.train(&mut trainer, text.into_iter())?;
    Ok(tok)
}

/// `n` pseudo-words of 4 to 9 lowercase letters, 16 to a line, from a fixed seed.
fn pseudo_words(n: usize) -> Vec<String> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(0x656d_6f65_746f_6b31);
    let mut lines = Vec::with_capacity(n.div_ceil(16));
    let mut line = String::new();
    for i in 0..n {
        let r = rng.next_u64();
        let len = 4 + (r % 6) as usize;
        line.push(' ');
        for k in 0..len {
            let letter = (r >> (8 + 5 * k)) % 26;
            line.push(char::from(b'a' + letter as u8));
        }
        if i % 16 == 15 || i + 1 == n {
            line.push('\n');
            lines.push(std::mem::take(&mut line));
        }
    }
    lines
}

/// tokenizer_config.json of a generated tokenizer.
fn config_json() -> Vec<u8> {
    let config = serde_json::json!({
        "add_bos_token": false,
        "add_eos_token": false,
        "bos_token": null,
        "chat_template": CHATML_TEMPLATE,
        "clean_up_tokenization_spaces": false,
        "eos_token": SPECIAL_TOKENS[0],
        "pad_token": SPECIAL_TOKENS[0],
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    // A `Value` always serialises.
    let mut out = serde_json::to_vec_pretty(&config).unwrap_or_default();
    out.push(b'\n');
    out
}
