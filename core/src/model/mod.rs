//! Model specs: the shapes of a Mixture-of-Experts transformer, from presets or a Hugging Face
//! `config.json`, with the tensor inventory and byte sizes per tensor group derived from them.

mod hf_config;
mod packing;
mod presets;
mod summary;
mod tensors;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use hf_config::{
    HfConfigError, MAX_CONFIG_BYTES, MAX_DIM, MAX_EXPERTS, MAX_HEADS, MAX_LAYERS, MAX_MATRIX_SIDE,
    MAX_MODEL_BYTES, MAX_SHARED_EXPERTS, MAX_TOTAL_EXPERTS, MAX_VOCAB, from_hf_config,
    from_hf_config_file,
};
pub use packing::{Pack, PackKey, PackedTensor, TENSOR_ALIGN};
pub use presets::{PRESETS, Preset, preset};
pub use summary::ModelSummary;
pub use tensors::{GroupSizes, Split, TensorGroup, TensorSpec, even_range};

/// The checkpoint family: decides tensor names and which fields a `config.json` carries.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    DeepseekV2,
    DeepseekV3,
    Qwen2Moe,
    Qwen3Moe,
    Mixtral,
}

impl Family {
    /// The Hugging Face `model_type`.
    pub const fn model_type(self) -> &'static str {
        match self {
            Self::DeepseekV2 => "deepseek_v2",
            Self::DeepseekV3 => "deepseek_v3",
            Self::Qwen2Moe => "qwen2_moe",
            Self::Qwen3Moe => "qwen3_moe",
            Self::Mixtral => "mixtral",
        }
    }

    pub const ALL: [Family; 5] = [
        Self::DeepseekV2,
        Self::DeepseekV3,
        Self::Qwen2Moe,
        Self::Qwen3Moe,
        Self::Mixtral,
    ];
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.model_type())
    }
}

/// Element type of the weights.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DType {
    Bf16,
    F16,
    F32,
    /// FP8 E4M3 with per-128×128-block f32 `weight_scale_inv` tensors (DeepSeek-V3's release).
    Fp8E4m3,
}

impl DType {
    pub const fn bytes(self) -> u64 {
        match self {
            Self::Bf16 | Self::F16 => 2,
            Self::F32 => 4,
            Self::Fp8E4m3 => 1,
        }
    }

    /// Short lower-case name: `bf16`, `f16`, `f32`, `fp8_e4m3`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
            Self::F32 => "f32",
            Self::Fp8E4m3 => "fp8_e4m3",
        }
    }

    /// The safetensors dtype name.
    pub const fn safetensors_name(self) -> &'static str {
        match self {
            Self::Bf16 => "BF16",
            Self::F16 => "F16",
            Self::F32 => "F32",
            Self::Fp8E4m3 => "F8_E4M3",
        }
    }
}

/// Attention shapes: DeepSeek's multi-head latent attention, or grouped-query attention.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Attention {
    Mla {
        /// `None` for DeepSeek-V2-Lite, which projects queries directly.
        q_lora_rank: Option<u32>,
        kv_lora_rank: u32,
        qk_nope_head_dim: u32,
        qk_rope_head_dim: u32,
        v_head_dim: u32,
        /// The rotary dims rotate in adjacent pairs (DeepSeek-V2 always; DeepSeek-V3's
        /// `rope_interleave`, true by default) rather than in halves (`rotate_half`).
        #[serde(default = "yes")]
        rope_interleave: bool,
    },
    Gqa {
        num_kv_heads: u32,
        head_dim: u32,
        /// Qwen2-MoE has biases on q/k/v projections.
        qkv_bias: bool,
        /// Qwen3 normalises q and k per head.
        qk_norm: bool,
    },
}

const fn yes() -> bool {
    true
}

/// YaRN rotary scaling (`rope_scaling` / `rope_parameters` with `rope_type: yarn`), the
/// parameters transformers' `_compute_yarn_parameters` reads.
#[derive(Clone, Copy, PartialEq, Debug, Serialize, Deserialize)]
pub struct Yarn {
    pub factor: f64,
    pub original_max_position_embeddings: u32,
    pub beta_fast: f64,
    pub beta_slow: f64,
    pub mscale: Option<f64>,
    pub mscale_all_dim: Option<f64>,
    /// Multiplies cos and sin; derived from `factor` and the mscales when absent.
    pub attention_factor: Option<f64>,
    /// Whether the correction range is rounded outwards to whole dims (default true).
    pub truncate: bool,
}

impl Yarn {
    /// YaRN's `0.1 · m · ln(scale) + 1` (1 for scale ≤ 1).
    pub fn get_mscale(scale: f64, m: f64) -> f64 {
        if scale <= 1.0 {
            1.0
        } else {
            0.1 * m * scale.ln() + 1.0
        }
    }

    /// The factor on cos and sin.
    pub fn attention_factor(&self) -> f64 {
        match (self.attention_factor, self.mscale, self.mscale_all_dim) {
            (Some(a), _, _) => a,
            (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                Self::get_mscale(self.factor, m) / Self::get_mscale(self.factor, all)
            }
            _ => Self::get_mscale(self.factor, 1.0),
        }
    }

    /// The factor on MLA's softmax scale (`mscale_all_dim` squared; 1 without it).
    pub fn softmax_factor(&self) -> f64 {
        match self.mscale_all_dim {
            Some(all) if all != 0.0 => Self::get_mscale(self.factor, all).powi(2),
            _ => 1.0,
        }
    }
}

/// How a router's logits become scores (`scoring_func`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scoring {
    #[default]
    Softmax,
    /// DeepSeek-V3: each expert's score is `sigmoid(logit)`.
    Sigmoid,
}

/// How a group of experts is ranked under group-limited top-k.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupRank {
    /// DeepSeek-V2 `group_limited_greedy`: the group's best score.
    #[default]
    Max,
    /// DeepSeek-V3 `noaux_tc`: the sum of the group's two best (bias-corrected) scores.
    TopTwoSum,
}

/// How a token's experts are chosen and weighted. The default is DeepSeek-V2 as transformers
/// computes it: the softmax probabilities of the top-k experts, not renormalised, times
/// `scaling_factor`.
#[derive(Clone, Copy, PartialEq, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Routing {
    pub scoring: Scoring,
    /// DeepSeek-V3's `e_score_correction_bias`: added to the scores to choose the experts (not
    /// to weight them).
    pub correction_bias: bool,
    /// Group-limited top-k: `(n_group, topk_group)` — the experts fall in `n_group` equal
    /// groups, the `topk_group` best groups (ranked by `group_rank`) are kept, and top-k is
    /// taken among their experts only.
    pub groups: Option<(u32, u32)>,
    pub group_rank: GroupRank,
    /// The chosen experts' weights are divided by their sum (`norm_topk_prob`; Mixtral always).
    pub normalize: bool,
    /// `routed_scaling_factor`: the routed experts' weights are multiplied by it (after any
    /// normalisation).
    pub scaling_factor: f64,
}

impl Default for Routing {
    fn default() -> Self {
        Self {
            scoring: Scoring::Softmax,
            correction_bias: false,
            groups: None,
            group_rank: GroupRank::Max,
            normalize: false,
            scaling_factor: 1.0,
        }
    }
}

/// The shapes of an MoE model. Construct from a [`preset`] or [`from_hf_config`].
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct ModelSpec {
    pub name: String,
    pub family: Family,
    pub num_layers: u32,
    /// Leading layers with a dense MLP instead of experts (DeepSeek `first_k_dense_replace`).
    pub first_dense_layers: u32,
    /// A layer `l >= first_dense_layers` is MoE when `l % moe_layer_freq == 0` (DeepSeek) …
    pub moe_layer_freq: u32,
    /// … or, for Qwen, when `(l + 1) % decoder_sparse_step == 0` and `l` is not MLP-only.
    pub decoder_sparse_step: u32,
    pub mlp_only_layers: Vec<u32>,
    pub hidden_size: u32,
    /// Dense MLP width (dense layers).
    pub intermediate_size: u32,
    /// One routed expert's FFN width.
    pub moe_intermediate_size: u32,
    pub num_routed_experts: u32,
    pub num_shared_experts: u32,
    /// Total FFN width of the shared expert(s) of one layer (0 when none).
    pub shared_expert_intermediate_size: u32,
    pub top_k: u32,
    pub num_attention_heads: u32,
    pub attention: Attention,
    pub vocab_size: u32,
    pub tie_word_embeddings: bool,
    pub dtype: DType,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// YaRN context extension (DeepSeek-V2-Lite, DeepSeek-V3); plain RoPE when `None`.
    #[serde(default)]
    pub rope_scaling: Option<Yarn>,
    /// Expert choice and weights (plain softmax top-k unless the config says otherwise).
    #[serde(default)]
    pub routing: Routing,
}

impl ModelSpec {
    /// Whether layer `l` holds routed experts.
    pub fn is_moe_layer(&self, l: u32) -> bool {
        if self.num_routed_experts == 0 || l >= self.num_layers || l < self.first_dense_layers {
            return false;
        }
        if self.mlp_only_layers.contains(&l) {
            return false;
        }
        l.is_multiple_of(self.moe_layer_freq.max(1))
            && (l + 1).is_multiple_of(self.decoder_sparse_step.max(1))
    }

    /// The MoE layers in order.
    pub fn moe_layers(&self) -> Vec<u32> {
        (0..self.num_layers)
            .filter(|&l| self.is_moe_layer(l))
            .collect()
    }

    /// Key/value cache bytes per token per layer on one device of a TP group of size `tp` (the
    /// engine keeps its KV cache in bf16 whatever the weights' dtype).
    /// MLA caches the compressed latent plus the rope key, shared by all heads (not TP-split);
    /// GQA caches K and V per KV head, split across TP ranks (replicated when heads < TP).
    pub fn kv_bytes_per_token_per_layer(&self, tp: u32) -> u64 {
        let elem = 2;
        match self.attention {
            Attention::Mla {
                kv_lora_rank,
                qk_rope_head_dim,
                ..
            } => u64::from(kv_lora_rank + qk_rope_head_dim) * elem,
            Attention::Gqa {
                num_kv_heads,
                head_dim,
                ..
            } => {
                let heads = u64::from(num_kv_heads.div_ceil(tp.max(1)));
                2 * heads * u64::from(head_dim) * elem
            }
        }
    }
}
