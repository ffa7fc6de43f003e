//! Bounds on `config.json`: every count and width has an upper bound checked before anything is
//! sized from it, and derived sizes are computed checked. Before, `num_hidden_layers = 4e9`
//! aborted on allocation, a million layers took 44 s and 6.8 GB before a refusal, and
//! `n_shared_experts × moe_intermediate_size` overflowed u32.

use std::time::{Duration, Instant};

use emoe_core::model::{self, HfConfigError};
use serde_json::{Value, json};

/// DeepSeek-V3's real shapes (its published config.json, shape-relevant keys).
fn deepseek_v3() -> Value {
    model::preset("deepseek-v3").unwrap().spec().to_hf_config()
}

fn with(mut v: Value, field: &str, value: Value) -> String {
    v.as_object_mut().unwrap().insert(field.into(), value);
    v.to_string()
}

/// Parses on a thread with a deadline: the old behaviour was minutes and gigabytes, or an abort.
fn refuse(text: String) -> HfConfigError {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(model::from_hf_config(&text, "x"));
    });
    let t = Instant::now();
    let r = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("refused within 10 s");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    r.expect_err("refused")
}

fn assert_names(e: &HfConfigError, field: &str, value: &str, limit: u64) {
    let s = e.to_string();
    assert!(
        s.contains(&format!("`{field}`")) && s.contains(value) && s.contains(&limit.to_string()),
        "{s}"
    );
}

#[test]
fn real_models_fit_the_bounds() {
    for p in model::PRESETS {
        let spec = p.spec();
        spec.check_limits()
            .unwrap_or_else(|e| panic!("{}: {e}", p.name));
        let text = spec.to_hf_config().to_string();
        model::from_hf_config(&text, p.name).unwrap();
    }
}

#[test]
fn huge_layer_counts_are_refused_fast_by_name() {
    for n in [4_000_000_000u64, 1_000_000, 1025] {
        let e = refuse(with(deepseek_v3(), "num_hidden_layers", n.into()));
        assert!(matches!(e, HfConfigError::TooLarge { .. }), "{e}");
        assert_names(
            &e,
            "num_hidden_layers",
            &n.to_string(),
            model::MAX_LAYERS.into(),
        );
    }
}

#[test]
fn every_count_and_width_has_a_bound() {
    let cases: [(&str, u64, u64); 8] = [
        ("n_routed_experts", 5000, model::MAX_EXPERTS.into()),
        ("n_shared_experts", 300, model::MAX_SHARED_EXPERTS.into()),
        ("hidden_size", 2_000_000, model::MAX_DIM.into()),
        ("moe_intermediate_size", 2_000_000, model::MAX_DIM.into()),
        ("intermediate_size", 2_000_000, model::MAX_DIM.into()),
        ("vocab_size", 5_000_000, model::MAX_VOCAB.into()),
        ("num_attention_heads", 5000, model::MAX_HEADS.into()),
        ("kv_lora_rank", 2_000_000, model::MAX_DIM.into()),
    ];
    for (field, value, limit) in cases {
        let e = refuse(with(deepseek_v3(), field, value.into()));
        assert!(matches!(e, HfConfigError::TooLarge { .. }), "{field}: {e}");
        assert_names(&e, field, &value.to_string(), limit);
    }
}

#[test]
fn shared_expert_width_is_multiplied_checked() {
    // 256 × 2^20 = 2^28: fits neither a matrix side nor (before) a u32 product of 2 × 2^31.
    let text = with(
        serde_json::from_str(&with(deepseek_v3(), "n_shared_experts", 256.into())).unwrap(),
        "moe_intermediate_size",
        json!(1 << 20),
    );
    let e = refuse(text);
    assert_names(
        &e,
        "n_shared_experts",
        &(256u64 << 20).to_string(),
        model::MAX_MATRIX_SIDE,
    );
    // The u32 overflow of the old code: 2 × 2^31.
    let text = with(
        serde_json::from_str(&with(deepseek_v3(), "n_shared_experts", 2.into())).unwrap(),
        "moe_intermediate_size",
        json!(1u64 << 31),
    );
    let e = refuse(text);
    assert_names(
        &e,
        "moe_intermediate_size",
        &(1u64 << 31).to_string(),
        model::MAX_DIM.into(),
    );
}

#[test]
fn products_of_heads_and_widths_are_bounded() {
    // 4096 heads × (2^20 + 64) per head: each within its own bound, the matrix side is not.
    let text = with(
        serde_json::from_str(&with(deepseek_v3(), "num_attention_heads", 4096.into())).unwrap(),
        "qk_nope_head_dim",
        json!(1 << 20),
    );
    let e = refuse(text);
    assert!(matches!(e, HfConfigError::TooLarge { .. }), "{e}");
    assert!(e.to_string().contains("matrix side"), "{e}");
}

#[test]
fn total_weights_are_bounded() {
    // 1024 layers × 4096 experts: each within bounds, but 4M experts over all layers.
    let text = with(
        serde_json::from_str(&with(deepseek_v3(), "num_hidden_layers", 1024.into())).unwrap(),
        "n_routed_experts",
        4096.into(),
    );
    let e = refuse(text);
    assert!(
        e.to_string().contains("routed experts over all MoE layers"),
        "{e}"
    );
    // Few experts, enormous widths: the byte total is what breaks.
    let mut v = deepseek_v3();
    for (k, n) in [
        ("hidden_size", 1u64 << 20),
        ("intermediate_size", 1 << 20),
        ("moe_intermediate_size", 1 << 20),
        ("vocab_size", 1 << 22),
    ] {
        v = serde_json::from_str(&with(v, k, n.into())).unwrap();
    }
    let e = refuse(v.to_string());
    assert!(matches!(e, HfConfigError::WeightsTooLarge { .. }), "{e}");
    assert!(
        e.to_string().contains(&model::MAX_MODEL_BYTES.to_string()),
        "{e}"
    );
}
