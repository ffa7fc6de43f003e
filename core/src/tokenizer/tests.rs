use std::sync::OnceLock;

use proptest::prelude::*;

use super::*;

/// The generated 1024-id tokenizer (micro-moe's size), trained once for all tests.
fn micro() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let (json, config) = generate_byte_level(1024).expect("generate");
        Tokenizer::from_json(&json, Some(&config)).expect("load generated")
    })
}

#[test]
fn tokenizer_is_shareable() {
    fn shareable<T: Clone + Send + Sync + std::fmt::Debug>() {}
    shareable::<Tokenizer>();
    let shown = format!("{:?}", micro());
    assert!(
        shown.contains("vocab_size: 1024") && shown.len() < 200,
        "{shown}"
    );
}

#[test]
fn generated_sizes_are_exact_and_deterministic() {
    for vocab in [1024, 4096] {
        let a = generate_byte_level(vocab).expect("generate");
        let b = generate_byte_level(vocab).expect("generate again");
        assert!(a == b, "two generations of {vocab} ids differ");
        let t = Tokenizer::from_json(&a.0, Some(&a.1)).expect("load");
        assert_eq!(t.vocab_size(), vocab);
        assert_eq!(t.eos_token_id(), Some(0));
        assert!(t.has_chat_template());
    }
}

#[test]
fn generate_refuses_sizes_out_of_range() {
    for bad in [0, 258, (1 << 20) + 1] {
        let e = generate_byte_level(bad).expect_err("refused").to_string();
        assert!(e.contains(&format!("vocab_size {bad}")), "{e}");
    }
    // The smallest size works: bytes and special tokens only.
    let (json, _) = generate_byte_level(MIN_GENERATED_VOCAB).expect("minimal");
    let t = Tokenizer::from_json(&json, None).expect("load");
    assert_eq!(t.vocab_size(), MIN_GENERATED_VOCAB);
    assert_eq!(
        t.decode(&t.encode("naïve", false).unwrap()).unwrap(),
        "naïve"
    );
}

#[test]
fn round_trip_and_special_tokens() {
    let t = micro();
    let text = "Hello, world! naïve café — 東京 🚀\n\tx = 1;";
    let ids = t.encode(text, true).unwrap();
    assert!(ids.len() < text.len(), "merges shorten text: {ids:?}");
    assert_eq!(t.decode(&ids).unwrap(), text);
    // Special tokens in text are single ids, and decode skips them.
    let ids = t.encode("<|im_start|>user\nhi<|im_end|>", false).unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(*ids.last().unwrap(), 2);
    assert_eq!(t.decode(&ids).unwrap(), "user\nhi");
    assert_eq!(t.token_text(0), "<|endoftext|>");
    assert_eq!(t.token_text(2), "<|im_end|>");
}

#[test]
fn refusals_name_the_value() {
    let t = micro();
    let e = t.decode(&[5, 1024]).expect_err("out of range").to_string();
    assert!(e.contains("1024") && e.contains("1024 ids"), "{e}");
    assert_eq!(t.token_text(99_999), "");
    let big = "a".repeat(MAX_ENCODE_BYTES + 1);
    let e = t.encode(&big, false).expect_err("too long").to_string();
    assert!(e.contains(&MAX_ENCODE_BYTES.to_string()), "{e}");
    let mut d = Detokenizer::new(t);
    assert!(d.push(4096).is_err());
}

#[test]
fn token_text_shows_partial_bytes_like_vllm() {
    let t = micro();
    // "東" is e6 9d b1: the single byte 0xe6 is a token of its own (all 256 bytes are).
    let e6 = t.encode("東", false).unwrap();
    let whole: String = e6.iter().map(|&i| t.token_text(i)).collect();
    if e6.len() == 1 {
        assert_eq!(whole, "東");
    } else {
        assert!(whole.starts_with("bytes:\\xe6"), "{whole}");
    }
    let a = t.encode("a", false).unwrap();
    assert_eq!(t.token_text(a[0]), "a");
    let sp = t.encode(" the", false).unwrap();
    let joined: String = sp.iter().map(|&i| t.token_text(i)).collect();
    assert_eq!(joined, " the");
}

#[test]
fn chat_template_chatml_and_custom() {
    let t = micro();
    let msgs = vec![
        ChatMessage {
            role: "system".into(),
            content: "Be brief.".into(),
        },
        ChatMessage {
            role: "user".into(),
            content: "Hi!".into(),
        },
    ];
    let p = t.apply_chat_template(&msgs, true).unwrap();
    assert_eq!(
        p,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    );
    let (json, _) = generate_byte_level(1024).unwrap();
    // No config: no template of its own, ChatML still renders, no eos.
    let bare = Tokenizer::from_json(&json, None).unwrap();
    assert!(!bare.has_chat_template());
    assert_eq!(bare.eos_token_id(), None);
    assert_eq!(bare.apply_chat_template(&msgs, true).unwrap(), p);

    // A template in the style of real ones: pycompat methods, loop controls, tojson,
    // raise_exception, bos/eos given as objects.
    let template = r#"{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}{% if not m.content.strip().startswith('H') %}{{ raise_exception('content must start with H, got ' ~ m.content) }}{% endif %}[{{ m.role.upper() }}] {{ m.content.strip() }} {{ m.role|tojson }}{{ eos_token }}
{% endfor %}{% if add_generation_prompt %}[ASSISTANT]{% endif %}"#;
    let config = serde_json::json!({
        "bos_token": {"content": "<|im_start|>", "lstrip": false},
        "eos_token": {"content": "<|im_end|>"},
        "chat_template": template,
    });
    let custom = Tokenizer::from_json(&json, Some(config.to_string().as_bytes())).unwrap();
    assert_eq!(custom.eos_token_id(), Some(2));
    assert_eq!(
        custom.apply_chat_template(&msgs, true).unwrap(),
        "<|im_start|>[USER] Hi! \"user\"<|im_end|>\n[ASSISTANT]"
    );
    let bad = [ChatMessage {
        role: "user".into(),
        content: "nope".into(),
    }];
    let e = custom
        .apply_chat_template(&bad, false)
        .expect_err("raise_exception")
        .to_string();
    assert!(e.contains("content must start with H, got nope"), "{e}");

    // The older list form.
    let config = serde_json::json!({"chat_template": [
        {"name": "tool_use", "template": "tools"},
        {"name": "default", "template": "{{ messages|length }}"},
    ]});
    let listed = Tokenizer::from_json(&json, Some(config.to_string().as_bytes())).unwrap();
    assert_eq!(listed.apply_chat_template(&msgs, false).unwrap(), "2");
}

#[test]
fn template_rendering_is_bounded_by_fuel() {
    let (json, _) = generate_byte_level(MIN_GENERATED_VOCAB).unwrap();
    let config = serde_json::json!({
        "chat_template": "{% for a in range(10000) %}{% for b in range(10000) %}x{% endfor %}{% endfor %}",
    });
    let t = Tokenizer::from_json(&json, Some(config.to_string().as_bytes())).unwrap();
    let e = t
        .apply_chat_template(&[], false)
        .expect_err("fuel")
        .to_string();
    assert!(
        e.contains("fuel") && e.contains(&TEMPLATE_FUEL.to_string()),
        "{e}"
    );
}

#[test]
fn bad_inputs_are_refused_with_the_rule() {
    let (json, _) = generate_byte_level(MIN_GENERATED_VOCAB).unwrap();
    let e = Tokenizer::from_json(b"{not json", None)
        .expect_err("json")
        .to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("not a valid tokenizer"),
        "{e}"
    );
    let cases: [(&str, &str); 5] = [
        ("[1]", "not a JSON object"),
        (r#"{"eos_token": 5}"#, "`eos_token` must be"),
        (r#"{"eos_token": "<|nope|>"}"#, "<|nope|>"),
        (r#"{"chat_template": 3}"#, "`chat_template` must be"),
        (r#"{"chat_template": "{% for %}"}"#, "does not compile"),
    ];
    for (config, want) in cases {
        let e = Tokenizer::from_json(&json, Some(config.as_bytes()))
            .expect_err(config)
            .to_string();
        assert!(
            e.contains(want) && e.contains("tokenizer_config.json"),
            "{config}: {e}"
        );
    }
}

#[test]
fn load_reads_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    assert!(Tokenizer::load(dir.path()).unwrap().is_none());
    let (json, config) = generate_byte_level(MIN_GENERATED_VOCAB).unwrap();
    std::fs::write(dir.path().join(TOKENIZER_FILE), &json).unwrap();
    let t = Tokenizer::load(dir.path()).unwrap().expect("present");
    assert!(!t.has_chat_template());
    // chat_template.jinja is used when the config has no template.
    std::fs::write(
        dir.path().join(CHAT_TEMPLATE_FILE),
        "J{{ messages|length }}",
    )
    .unwrap();
    let t = Tokenizer::load(dir.path()).unwrap().expect("present");
    assert!(t.has_chat_template());
    assert_eq!(t.apply_chat_template(&[], false).unwrap(), "J0");
    std::fs::write(dir.path().join(TOKENIZER_CONFIG_FILE), &config).unwrap();
    let t = Tokenizer::load(dir.path()).unwrap().expect("present");
    assert_eq!(
        t.apply_chat_template(&[], true).unwrap(),
        "<|im_start|>assistant\n"
    );
    // A directory where the config should be: refused, naming it.
    std::fs::remove_file(dir.path().join(TOKENIZER_CONFIG_FILE)).unwrap();
    std::fs::create_dir(dir.path().join(TOKENIZER_CONFIG_FILE)).unwrap();
    let e = Tokenizer::load(dir.path()).expect_err("dir").to_string();
    assert!(
        e.contains("tokenizer_config.json") && e.contains("not a regular file"),
        "{e}"
    );
}

#[test]
fn detokenizer_holds_incomplete_characters() {
    let t = micro();
    // Byte-level single-byte tokens for "é" (c3 a9): the first alone is held back.
    let c3 = t.encode("é", false).unwrap();
    let mut d = Detokenizer::new(t);
    let mut out = String::new();
    for &id in &c3 {
        out.push_str(&d.push(id).unwrap());
    }
    out.push_str(&d.finish().unwrap());
    assert_eq!(out, "é");
    // Raw byte tokens: find the ids of bytes 0xc3 and 0xa9 through their characters.
    let id_of = |c: char| t.inner.token_to_id(&c.to_string()).unwrap();
    let mut d = Detokenizer::new(t);
    assert_eq!(d.push(id_of('Ã')).unwrap(), "", "0xc3 alone is held");
    assert_eq!(d.push(id_of('©')).unwrap(), "é");
    // A lone lead byte at the end is flushed by finish as U+FFFD.
    assert_eq!(d.push(id_of('Ã')).unwrap(), "");
    assert_eq!(d.finish().unwrap(), "\u{FFFD}");
}

fn detok_all(t: &Tokenizer, ids: &[u32]) -> String {
    let mut d = Detokenizer::new(t);
    let mut out = String::new();
    for &id in ids {
        out.push_str(&d.push(id).unwrap());
    }
    out.push_str(&d.finish().unwrap());
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn detokenizer_pieces_concatenate_to_decode(ids in proptest::collection::vec(0u32..1024, 0..64)) {
        let t = micro();
        prop_assert_eq!(detok_all(t, &ids), t.decode(&ids).unwrap());
    }

    #[test]
    fn detokenizer_on_encoded_text(s in "[a-zé東🚀 .,\n]{0,40}") {
        let t = micro();
        let ids = t.encode(&s, false).unwrap();
        prop_assert_eq!(t.decode(&ids).unwrap(), s.clone());
        prop_assert_eq!(detok_all(t, &ids), s);
    }
}
