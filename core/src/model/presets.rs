//! Built-in model specs: the real shapes of three published MoE models (for planning and the
//! modeled backend) and two small ones whose checkpoints we generate (for the host backend).

use super::{Attention, DType, Family, GroupRank, ModelSpec, Scoring, Yarn};

/// A named built-in spec.
#[derive(Clone, Copy, Debug)]
pub struct Preset {
    pub name: &'static str,
    /// One line for `--help` and errors.
    pub about: &'static str,
    /// Whether the tool can generate a checkpoint for it (small enough for host memory).
    pub generated: bool,
    build: fn() -> ModelSpec,
}

impl Preset {
    pub fn spec(&self) -> ModelSpec {
        (self.build)()
    }
}

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "deepseek-v2-lite",
        about: "DeepSeek-V2-Lite, 15.7B: 27 layers, 64 routed + 2 shared experts, top-6, MLA",
        generated: false,
        build: deepseek_v2_lite,
    },
    Preset {
        name: "qwen3-30b-a3b",
        about: "Qwen3-30B-A3B, 30.5B: 48 layers, 128 experts, top-8, GQA 32/4",
        generated: false,
        build: qwen3_30b_a3b,
    },
    Preset {
        name: "deepseek-v3",
        about: "DeepSeek-V3, 671B (FP8): 61 layers, 256 routed + 1 shared experts, top-8, MLA",
        generated: false,
        build: deepseek_v3,
    },
    Preset {
        name: "tiny-moe",
        about: "DeepSeek-V2-Lite's structure scaled to ~350 MiB: 8 layers, 64 routed + 2 shared, top-6",
        generated: true,
        build: tiny_moe,
    },
    Preset {
        name: "micro-moe",
        about: "a few MiB for tests: 4 layers, 16 routed + 1 shared experts, top-4",
        generated: true,
        build: micro_moe,
    },
];

/// Look up a preset by name (case-insensitive).
pub fn preset(name: &str) -> Option<&'static Preset> {
    PRESETS
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case(name.trim()))
}

fn deepseek_v2_family(name: &str) -> ModelSpec {
    ModelSpec {
        name: name.to_string(),
        family: Family::DeepseekV2,
        num_layers: 27,
        first_dense_layers: 1,
        moe_layer_freq: 1,
        decoder_sparse_step: 1,
        mlp_only_layers: Vec::new(),
        hidden_size: 2048,
        intermediate_size: 10944,
        moe_intermediate_size: 1408,
        num_routed_experts: 64,
        num_shared_experts: 2,
        shared_expert_intermediate_size: 2 * 1408,
        top_k: 6,
        num_attention_heads: 16,
        attention: Attention::Mla {
            q_lora_rank: None,
            kv_lora_rank: 512,
            qk_nope_head_dim: 128,
            qk_rope_head_dim: 64,
            v_head_dim: 128,
            rope_interleave: true,
        },
        vocab_size: 102400,
        tie_word_embeddings: false,
        dtype: DType::Bf16,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        rope_scaling: None,
        routing: super::Routing::default(),
    }
}

/// deepseek-ai/DeepSeek-V2-Lite `config.json`.
fn deepseek_v2_lite() -> ModelSpec {
    ModelSpec {
        rope_scaling: Some(Yarn {
            factor: 40.0,
            original_max_position_embeddings: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: Some(0.707),
            mscale_all_dim: Some(0.707),
            attention_factor: None,
            truncate: true,
        }),
        ..deepseek_v2_family("deepseek-v2-lite")
    }
}

/// Qwen/Qwen3-30B-A3B `config.json`.
fn qwen3_30b_a3b() -> ModelSpec {
    ModelSpec {
        name: "qwen3-30b-a3b".into(),
        family: Family::Qwen3Moe,
        num_layers: 48,
        first_dense_layers: 0,
        moe_layer_freq: 1,
        decoder_sparse_step: 1,
        mlp_only_layers: Vec::new(),
        hidden_size: 2048,
        intermediate_size: 6144,
        moe_intermediate_size: 768,
        num_routed_experts: 128,
        num_shared_experts: 0,
        shared_expert_intermediate_size: 0,
        top_k: 8,
        num_attention_heads: 32,
        attention: Attention::Gqa {
            num_kv_heads: 4,
            head_dim: 128,
            qkv_bias: false,
            qk_norm: true,
        },
        vocab_size: 151936,
        tie_word_embeddings: false,
        dtype: DType::Bf16,
        rms_norm_eps: 1e-6,
        rope_theta: 1_000_000.0,
        rope_scaling: None,
        // `norm_topk_prob: true`
        routing: super::Routing {
            normalize: true,
            ..super::Routing::default()
        },
    }
}

/// deepseek-ai/DeepSeek-V3 `config.json` (the main model; the multi-token-prediction layer is
/// not served and not counted).
fn deepseek_v3() -> ModelSpec {
    ModelSpec {
        name: "deepseek-v3".into(),
        family: Family::DeepseekV3,
        num_layers: 61,
        first_dense_layers: 3,
        moe_layer_freq: 1,
        decoder_sparse_step: 1,
        mlp_only_layers: Vec::new(),
        hidden_size: 7168,
        intermediate_size: 18432,
        moe_intermediate_size: 2048,
        num_routed_experts: 256,
        num_shared_experts: 1,
        shared_expert_intermediate_size: 2048,
        top_k: 8,
        num_attention_heads: 128,
        attention: Attention::Mla {
            q_lora_rank: Some(1536),
            kv_lora_rank: 512,
            qk_nope_head_dim: 128,
            qk_rope_head_dim: 64,
            v_head_dim: 128,
            rope_interleave: true,
        },
        vocab_size: 129280,
        tie_word_embeddings: false,
        dtype: DType::Fp8E4m3,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        rope_scaling: Some(Yarn {
            factor: 40.0,
            original_max_position_embeddings: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: Some(1.0),
            mscale_all_dim: Some(1.0),
            attention_factor: None,
            truncate: true,
        }),
        routing: super::Routing {
            scoring: Scoring::Sigmoid,
            correction_bias: true,
            groups: Some((8, 4)),
            group_rank: GroupRank::TopTwoSum,
            normalize: true,
            scaling_factor: 2.5,
        },
    }
}

/// DeepSeek-V2-Lite's structure (MLA without q-LoRA, leading dense layer, 64 routed + 2 shared
/// experts, top-6) at a size the host backend holds: one expert is exactly 768 KiB.
fn tiny_moe() -> ModelSpec {
    ModelSpec {
        num_layers: 8,
        hidden_size: 512,
        intermediate_size: 1536,
        moe_intermediate_size: 256,
        shared_expert_intermediate_size: 2 * 256,
        num_attention_heads: 8,
        attention: Attention::Mla {
            q_lora_rank: None,
            kv_lora_rank: 128,
            qk_nope_head_dim: 32,
            qk_rope_head_dim: 16,
            v_head_dim: 32,
            rope_interleave: true,
        },
        vocab_size: 4096,
        ..deepseek_v2_family("tiny-moe")
    }
}

/// The same structure at a few MiB, for tests: one expert is 48 KiB.
fn micro_moe() -> ModelSpec {
    ModelSpec {
        num_layers: 4,
        hidden_size: 128,
        intermediate_size: 256,
        moe_intermediate_size: 64,
        num_routed_experts: 16,
        num_shared_experts: 1,
        shared_expert_intermediate_size: 64,
        top_k: 4,
        num_attention_heads: 4,
        attention: Attention::Mla {
            q_lora_rank: None,
            kv_lora_rank: 64,
            qk_nope_head_dim: 32,
            qk_rope_head_dim: 16,
            v_head_dim: 32,
            rope_interleave: true,
        },
        vocab_size: 1024,
        ..deepseek_v2_family("micro-moe")
    }
}
