//! Model specs: the presets carry the published shapes, `config.json` round-trips, and every
//! refusal names its field.

use emoe_core::model::{self, DType, Family, HfConfigError, ModelSpec, TensorGroup};

fn params(spec: &ModelSpec) -> f64 {
    spec.group_sizes().parameters as f64
}

fn assert_near(name: &str, got: f64, want: f64, tol: f64) {
    let rel = (got - want).abs() / want;
    assert!(
        rel < tol,
        "{name}: {got:.4e} parameters, published {want:.4e} (off by {:.2}%)",
        rel * 100.0
    );
}

#[test]
fn presets_match_published_parameter_counts() {
    let p = |n: &str| model::preset(n).unwrap().spec();
    // Published totals: DeepSeek-V2-Lite 15.7B, Qwen3-30B-A3B 30.5B, DeepSeek-V3 671B for the
    // main model (its Hugging Face release adds a 14B multi-token-prediction module: 685B).
    assert_near(
        "deepseek-v2-lite",
        params(&p("deepseek-v2-lite")),
        15.7e9,
        0.01,
    );
    assert_near("qwen3-30b-a3b", params(&p("qwen3-30b-a3b")), 30.5e9, 0.01);
    assert_near("deepseek-v3", params(&p("deepseek-v3")), 671e9, 0.01);
}

#[test]
fn group_sizes_add_up_and_experts_dominate() {
    for preset in model::PRESETS {
        let spec = preset.spec();
        let s = spec.group_sizes();
        let sum = s.embedding
            + s.attention
            + s.norm
            + s.dense_mlp
            + s.shared_expert
            + s.router
            + s.routed_experts
            + s.lm_head;
        assert_eq!(sum, s.total, "{}", preset.name);
        let moe = spec.moe_layers().len() as u64;
        assert_eq!(
            s.routed_experts,
            moe * u64::from(spec.num_routed_experts) * s.one_expert,
            "{}",
            preset.name
        );
        assert!(
            s.routed_experts * 2 > s.total,
            "{}: experts are most of an MoE model",
            preset.name
        );
    }
}

#[test]
fn small_presets_have_the_intended_sizes() {
    let tiny = model::preset("tiny-moe").unwrap().spec();
    assert_eq!(tiny.family, Family::DeepseekV2);
    assert_eq!(
        (tiny.num_routed_experts, tiny.num_shared_experts, tiny.top_k),
        (64, 2, 6)
    );
    assert_eq!(tiny.expert_bytes(), 768 * 1024);
    let total = tiny.group_sizes().total;
    assert!(
        (300 << 20..450 << 20).contains(&total),
        "tiny-moe is {total} bytes"
    );

    let micro = model::preset("micro-moe").unwrap().spec();
    assert_eq!(micro.expert_bytes(), 48 * 1024);
    let total = micro.group_sizes().total;
    assert!(
        (1 << 20..8 << 20).contains(&total),
        "micro-moe is {total} bytes"
    );
    assert!(model::preset("MICRO-MOE").is_some());
    assert!(model::preset("gpt-5").is_none());
}

#[test]
fn deepseek_v3_is_fp8_with_block_scales() {
    let v3 = model::preset("deepseek-v3").unwrap().spec();
    assert_eq!(v3.dtype, DType::Fp8E4m3);
    let t = v3.expert_tensors(3, 7);
    let names: Vec<_> = t.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names[0], "model.layers.3.mlp.experts.7.gate_proj.weight");
    assert_eq!(
        names[1],
        "model.layers.3.mlp.experts.7.gate_proj.weight_scale_inv"
    );
    assert_eq!(t[1].shape, vec![16, 56]);
    assert_eq!(v3.moe_layers().len(), 58);
    assert!(!v3.is_moe_layer(2) && v3.is_moe_layer(3));
}

#[test]
fn tp_shards_partition_every_tensor() {
    let spec = model::preset("micro-moe").unwrap().spec();
    for tp in [1, 2, 3, 4] {
        for t in spec.tensors() {
            let total: u64 = (0..tp).map(|r| t.shard_bytes(tp, r)).sum();
            let expected = if t.split == model::Split::Replicated {
                t.bytes() * u64::from(tp)
            } else {
                t.bytes()
            };
            assert_eq!(total, expected, "{} tp{tp}", t.name);
            for r in 0..tp {
                let ranges = t.shard_byte_ranges(tp, r);
                let len: u64 = ranges.iter().map(|(a, b)| b - a).sum();
                assert_eq!(len, t.shard_bytes(tp, r), "{} tp{tp} rank {r}", t.name);
                assert!(ranges.iter().all(|&(a, b)| a <= b && b <= t.bytes()));
            }
        }
    }
    assert!(
        spec.tensors()
            .iter()
            .filter(|t| t.group == TensorGroup::Expert)
            .count()
            == 3 * 3 * 16
    );
}

#[test]
fn presets_round_trip_through_config_json() {
    for preset in model::PRESETS {
        let spec = preset.spec();
        let text = spec.to_hf_config().to_string();
        let back = model::from_hf_config(&text, &spec.name).unwrap();
        assert_eq!(back, spec, "{}", preset.name);
    }
}

const QWEN15_MOE: &str = r#"{
  "architectures": ["Qwen2MoeForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
  "decoder_sparse_step": 1, "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 2048,
  "initializer_range": 0.02, "intermediate_size": 5632, "max_position_embeddings": 8192,
  "max_window_layers": 21, "model_type": "qwen2_moe", "moe_intermediate_size": 1408,
  "norm_topk_prob": false, "num_attention_heads": 16, "num_experts": 60, "num_experts_per_tok": 4,
  "num_hidden_layers": 24, "num_key_value_heads": 16, "output_router_logits": false,
  "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001,
  "shared_expert_intermediate_size": 5632, "sliding_window": 32768, "tie_word_embeddings": false,
  "torch_dtype": "bfloat16", "transformers_version": "4.39.0.dev0", "use_cache": true,
  "use_sliding_window": false, "vocab_size": 151936
}"#;

const MIXTRAL_8X7B: &str = r#"{
  "architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1,
  "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
  "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mixtral",
  "num_attention_heads": 32, "num_experts_per_tok": 2, "num_hidden_layers": 32,
  "num_key_value_heads": 8, "num_local_experts": 8, "output_router_logits": false,
  "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.02,
  "sliding_window": null, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.36.0.dev0", "use_cache": true, "vocab_size": 32000
}"#;

#[test]
fn reads_real_qwen2_moe_and_mixtral_configs() {
    let q = model::from_hf_config(QWEN15_MOE, "qwen1.5-moe-a2.7b").unwrap();
    assert_eq!(q.family, Family::Qwen2Moe);
    assert_near("qwen1.5-moe-a2.7b", params(&q), 14.3e9, 0.01);
    assert!(
        q.tensors()
            .iter()
            .any(|t| t.name == "model.layers.0.mlp.shared_expert_gate.weight")
    );
    assert!(
        q.tensors()
            .iter()
            .any(|t| t.name == "model.layers.5.self_attn.k_proj.bias")
    );

    let m = model::from_hf_config(MIXTRAL_8X7B, "mixtral-8x7b").unwrap();
    assert_eq!(m.family, Family::Mixtral);
    assert_near("mixtral-8x7b", params(&m), 46.7e9, 0.01);
    assert!(
        m.tensors()
            .iter()
            .any(|t| t.name == "model.layers.31.block_sparse_moe.experts.7.w2.weight")
    );
}

fn err(text: &str) -> HfConfigError {
    model::from_hf_config(text, "x").unwrap_err()
}

fn without(text: &str, field: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
    v.as_object_mut().unwrap().remove(field);
    v.to_string()
}

fn with(text: &str, field: &str, value: serde_json::Value) -> String {
    let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
    v.as_object_mut().unwrap().insert(field.into(), value);
    v.to_string()
}

#[test]
fn every_refusal_names_the_field() {
    let v2 = model::preset("deepseek-v2-lite")
        .unwrap()
        .spec()
        .to_hf_config()
        .to_string();
    for field in [
        "kv_lora_rank",
        "n_routed_experts",
        "hidden_size",
        "torch_dtype",
        "model_type",
        "num_experts_per_tok",
    ] {
        let e = err(&without(&v2, field));
        assert!(matches!(e, HfConfigError::Missing { .. }), "{field}: {e:?}");
        assert!(e.to_string().contains(&format!("`{field}`")), "{e}");
    }
    let e = err(&without(QWEN15_MOE, "shared_expert_intermediate_size"));
    assert!(
        e.to_string().contains("`shared_expert_intermediate_size`")
            && e.to_string().contains("qwen2_moe")
    );
    let e = err(&without(MIXTRAL_8X7B, "num_local_experts"));
    assert!(e.to_string().contains("`num_local_experts`"));

    let e = err(&with(&v2, "frobnicate_experts", 3.into()));
    assert!(
        matches!(e, HfConfigError::UnknownField { .. })
            && e.to_string().contains("`frobnicate_experts`")
    );

    let e = err(&with(&v2, "hidden_size", "big".into()));
    assert!(
        matches!(e, HfConfigError::WrongType { .. }) && e.to_string().contains("`hidden_size`")
    );

    let e = err(&with(&v2, "model_type", "llama".into()));
    assert!(e.to_string().contains("`llama`"));

    let e = err(&with(&v2, "torch_dtype", "int4".into()));
    assert!(e.to_string().contains("torch_dtype") && e.to_string().contains("int4"));

    let e = err(&with(&v2, "num_experts_per_tok", 65.into()));
    assert!(e.to_string().contains("num_experts_per_tok"));

    let e = err(&with(
        &v2,
        "quantization_config",
        serde_json::json!({"quant_method": "awq"}),
    ));
    assert!(e.to_string().contains("quantization_config"));

    assert!(matches!(err("[1]"), HfConfigError::NotObject));
    assert!(matches!(err("{"), HfConfigError::Json(_)));
    let e =
        model::from_hf_config_file(std::path::Path::new("/nonexistent/config.json")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/config.json"));
}

#[test]
fn kv_bytes_follow_the_attention_kind() {
    let v2 = model::preset("deepseek-v2-lite").unwrap().spec();
    // MLA caches 512 + 64 values per token per layer, the same on every TP rank.
    assert_eq!(v2.kv_bytes_per_token_per_layer(1), 576 * 2);
    assert_eq!(v2.kv_bytes_per_token_per_layer(4), 576 * 2);
    let q = model::preset("qwen3-30b-a3b").unwrap().spec();
    assert_eq!(q.kv_bytes_per_token_per_layer(1), 2 * 4 * 128 * 2);
    assert_eq!(q.kv_bytes_per_token_per_layer(2), 2 * 2 * 128 * 2);
    // Fewer KV heads than TP ranks: each rank keeps one head.
    assert_eq!(q.kv_bytes_per_token_per_layer(8), 2 * 128 * 2);
}

/// The bytes of every tensor the loader would place (`tensors()`), in the dtypes the released
/// checkpoints store.
fn checkpoint_bytes(spec: &ModelSpec) -> u64 {
    spec.tensors().iter().map(|t| t.bytes()).sum()
}

#[test]
fn presets_hold_the_bytes_of_the_released_checkpoints() {
    // Qwen3-30B-A3B: the Hub's model.safetensors.index.json `total_size`, all bf16:
    // 48 layers × (attention 38,281,728 incl. router and norms + 128 experts × 9,437,184)
    // + embeddings, LM head and final norm 1,244,663,808.
    let q = model::preset("qwen3-30b-a3b").unwrap().spec();
    assert_eq!(q.expert_bytes(), 3 * 768 * 2048 * 2);
    assert_eq!(checkpoint_bytes(&q), 61_064_245_248);
    // DeepSeek-V3 without its multi-token-prediction layer (the loader does not place it):
    // fp8 linear weights, each with f32 scales per 128×128 block, bf16 norms, embeddings,
    // LM head and router, f32 `e_score_correction_bias`. By hand: an expert 3 × 2048 × 7168
    // + 3 × 16 × 56 × 4 = 44,050,944; MLA with q-LoRA and the two norms 187,183,840 per layer;
    // dense layers add an 18432-wide MLP (583,642,336 in all), MoE layers the router, bias
    // and shared expert (234,905,824 without the routed experts); globals 3,706,730,496.
    let v3 = model::preset("deepseek-v3").unwrap().spec();
    assert_eq!(v3.expert_bytes(), 44_050_944);
    let by_hand = 3 * 583_642_336 + 58 * (234_905_824 + 256 * 44_050_944) + 3_706_730_496u64;
    assert_eq!(checkpoint_bytes(&v3), by_hand);
    assert_eq!(by_hand, 673_150_611_808);
}
