//! Generated checkpoints carry a tokenizer of the preset's vocabulary: it loads from the
//! directory, round-trips text with non-ASCII characters, and the cache regenerates an entry
//! whose tokenizer files went missing.

use emoe_core::checkpoint::{self, INFO_FILE};
use emoe_core::model;
use emoe_core::tokenizer::{
    ChatMessage, Detokenizer, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, Tokenizer,
};
use proptest::strategy::Strategy;

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

/// A small tokenizer in the style of Llama's `tokenizer.json`: SentencePiece-like BPE with
/// byte fallback, a `▁` prefix normalizer, a BOS post-processor, and a decoder that strips the
/// first space, so streaming needs the previous piece's context.
fn llama_like() -> Tokenizer {
    let vocab = serde_json::json!({
        "<unk>": 0, "<s>": 1, "</s>": 2, "<0xE6>": 3, "<0x9D>": 4, "<0xB1>": 5, "▁": 6,
        "H": 7, "e": 8, "l": 9, "o": 10, "w": 11, "r": 12, "d": 13, "▁H": 14, "ll": 15,
    });
    let special = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": null,
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
            "byte_fallback": true, "ignore_merges": false, "vocab": vocab,
            "merges": ["▁ H", "l l"]},
    });
    let config = serde_json::json!({"bos_token": "<s>", "eos_token": {"content": "</s>"}});
    Tokenizer::from_json(
        json.to_string().as_bytes(),
        Some(config.to_string().as_bytes()),
    )
    .expect("llama-like tokenizer")
}

fn streamed(t: &Tokenizer, ids: &[u32]) -> (Vec<String>, String) {
    let mut d = Detokenizer::new(t);
    let mut pieces: Vec<String> = ids.iter().map(|&id| d.push(id).expect("push")).collect();
    pieces.push(d.finish().expect("finish"));
    let all = pieces.concat();
    (pieces, all)
}

#[test]
fn llama_style_tokenizer_bos_byte_fallback_and_streaming() {
    let t = llama_like();
    assert_eq!(t.vocab_size(), 16);
    assert_eq!(t.eos_token_id(), Some(2));
    assert!(!t.has_chat_template());
    let ids = t.encode("Hello world", true).expect("encode");
    assert_eq!(ids, [1, 14, 8, 15, 10, 6, 11, 10, 12, 9, 13]);
    assert_eq!(t.decode(&ids).expect("decode"), "Hello world");
    assert_eq!(t.encode("Hello", false).expect("encode")[0], 14);
    let (pieces, all) = streamed(&t, &ids);
    assert_eq!(all, "Hello world");
    // The space before "world" comes with its own token, not lost to the decoder's strip.
    assert_eq!(pieces[5], " ");
    assert_eq!(pieces[6], "w");

    // 東 is three byte-fallback tokens: held until the last completes it.
    let ids = t.encode("東", false).expect("encode");
    assert_eq!(ids, [6, 3, 4, 5]);
    let (pieces, all) = streamed(&t, &ids);
    assert_eq!(all, "東");
    assert_eq!(pieces[1..3], ["", ""]);
    assert_eq!(t.token_text(3), "bytes:\\xe6");
    assert_eq!(t.token_text(1), "<s>");
    assert_eq!(t.token_text(16), "");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Streaming equals a whole decode with a context-dependent decoder too, for valid byte
    /// runs (an invalid run is replaced as a whole by ByteFallback, which a stream cannot take
    /// back once a valid prefix of it was shown).
    #[test]
    fn llama_style_stream_concatenates_to_decode(chunks in proptest::collection::vec(
        proptest::prop_oneof![
            (0u32..3).prop_map(|i| vec![i]),
            (6u32..16).prop_map(|i| vec![i]),
            proptest::strategy::Just(vec![3, 4, 5]),
        ],
        0..40,
    )) {
        let ids: Vec<u32> = chunks.concat();
        let t = llama_like();
        proptest::prop_assert_eq!(streamed(&t, &ids).1, t.decode(&ids).expect("decode"));
    }
}
