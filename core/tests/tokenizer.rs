//! Generated checkpoints carry a tokenizer of the preset's vocabulary: it loads from the
//! directory, round-trips text with non-ASCII characters, and the cache regenerates an entry
//! whose tokenizer files went missing.

use emoe_core::checkpoint::{self, INFO_FILE};
use emoe_core::model;
use emoe_core::tokenizer::{
    ChatMessage, Detokenizer, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, Tokenizer,
};

const SEED: u64 = 7;

#[test]
fn generated_preset_has_a_working_tokenizer() {
    let spec = model::preset("micro-moe").expect("micro-moe").spec();
    assert!(checkpoint::generates_tokenizer(&spec));
    let root = tempfile::tempdir().expect("tempdir");
    let dir = checkpoint::ensure_generated(&spec, SEED, root.path()).expect("generate");
    let t = Tokenizer::load(&dir)
        .expect("load")
        .expect("a tokenizer is there");
    assert_eq!(t.vocab_size(), spec.vocab_size);
    assert_eq!(t.eos_token_id(), Some(0));
    assert!(t.has_chat_template());

    let text = "The naïve café — 東京, at 21°C. 🚀";
    let ids = t.encode(text, true).expect("encode");
    assert!(ids.iter().all(|&id| id < spec.vocab_size));
    assert_eq!(t.decode(&ids).expect("decode"), text);
    let mut d = Detokenizer::new(&t);
    let mut streamed = String::new();
    for &id in &ids {
        streamed.push_str(&d.push(id).expect("push"));
    }
    streamed.push_str(&d.finish().expect("finish"));
    assert_eq!(streamed, text);

    let prompt = t
        .apply_chat_template(
            &[ChatMessage {
                role: "user".into(),
                content: text.into(),
            }],
            true,
        )
        .expect("template");
    assert_eq!(
        prompt,
        format!("<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")
    );

    // The files are the generator's bytes: a second generation elsewhere is identical.
    let other = tempfile::tempdir().expect("tempdir");
    checkpoint::generate(&spec, SEED, other.path()).expect("generate again");
    for f in [TOKENIZER_FILE, TOKENIZER_CONFIG_FILE] {
        assert!(
            std::fs::read(dir.join(f)).expect("read")
                == std::fs::read(other.path().join(f)).expect("read"),
            "{f} differs between generations"
        );
    }
}

#[test]
fn cache_regenerates_an_entry_without_its_tokenizer() {
    let spec = model::preset("micro-moe").expect("micro-moe").spec();
    let root = tempfile::tempdir().expect("tempdir");
    let dir = checkpoint::ensure_generated(&spec, SEED, root.path()).expect("generate");
    std::fs::remove_file(dir.join(TOKENIZER_FILE)).expect("remove");
    assert!(dir.join(INFO_FILE).exists());
    let again = checkpoint::ensure_generated(&spec, SEED, root.path()).expect("regenerate");
    assert_eq!(again, dir);
    assert!(Tokenizer::load(&again).expect("load").is_some());
}

#[test]
fn big_vocabularies_get_no_generated_tokenizer() {
    let mut spec = model::preset("micro-moe").expect("micro-moe").spec();
    spec.vocab_size = checkpoint::MAX_TOKENIZER_VOCAB + 1;
    assert!(!checkpoint::generates_tokenizer(&spec));
    spec.vocab_size = 100;
    assert!(!checkpoint::generates_tokenizer(&spec));
}
