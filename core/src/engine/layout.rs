//! Where every tensor the engine reads lives: for each TP rank, the slot of its non-expert
//! reservation (one pack per slot) and the offset inside it; for experts, the offsets inside an
//! expert pack (the same for every expert); and the KV cache's block layout.

use super::rope::Rope;
use super::routing::Rule;
use super::{EngineError, math};
use crate::model::{Attention, DType, Family, ModelSpec, Pack, PackedTensor};

/// A 2-D matrix (a 1-D vector has `rows == 1`) inside a reservation slot, stored as bf16, f16
/// or f32 as the checkpoint was; widened to f32 per use.
#[derive(Clone, Copy, Debug)]
pub struct Mat {
    pub slot: usize,
    pub offset: u64,
    pub rows: usize,
    pub cols: usize,
    pub dtype: DType,
}

impl Mat {
    pub fn row_bytes(&self) -> usize {
        self.cols * self.dtype.bytes() as usize
    }

    pub fn bytes(&self) -> u64 {
        (self.rows * self.row_bytes()) as u64
    }

    /// Widen this matrix's stored bytes (whole rows of it) into f32 values.
    pub fn widen(&self, bytes: &[u8], out: &mut Vec<f32>) {
        match self.dtype {
            DType::F16 => math::widen_f16(bytes, out),
            DType::F32 => math::widen_f32(bytes, out),
            // `find` admits no other dtype.
            _ => math::widen(bytes, out),
        }
    }
}

/// A SwiGLU MLP: gate and up `[width, h]`, down `[h, width]` (one TP shard of each).
#[derive(Clone, Copy, Debug)]
pub struct Mlp {
    pub gate: Mat,
    pub up: Mat,
    pub down: Mat,
}

#[derive(Clone, Copy, Debug)]
pub enum Ffn {
    Dense(Mlp),
    Moe {
        router: Mat,
        /// DeepSeek-V3's `e_score_correction_bias` (`[experts]`, stored as f32).
        correction_bias: Option<Mat>,
        shared: Option<Mlp>,
        /// Qwen2-MoE's `shared_expert_gate` (`[1, h]`): the shared expert's output is scaled
        /// by `sigmoid(gate · x)`.
        shared_gate: Option<Mat>,
    },
}

/// MLA's query projection: direct (DeepSeek-V2-Lite) or through a low-rank latent.
#[derive(Clone, Copy, Debug)]
pub enum QProj {
    /// `[heads_r × (nope + rope), h]`
    Direct(Mat),
    /// `q_a_proj` `[q_lora, h]` (replicated), `q_a_layernorm`, `q_b_proj`
    /// `[heads_r × (nope + rope), q_lora]`.
    Lora { a: Mat, norm: Mat, b: Mat },
}

/// One layer's attention tensors on one TP rank.
#[derive(Clone, Copy, Debug)]
pub enum AttnMats {
    Mla {
        q: QProj,
        /// `[kv_lora + rope, h]`, replicated
        kv_a: Mat,
        kv_a_norm: Mat,
        /// `[heads_r × (nope + v), kv_lora]`
        kv_b: Mat,
        /// `[h, heads_r × v]`
        o: Mat,
    },
    Gqa {
        /// `[heads_r × head_dim, h]`
        q: Mat,
        /// `[kv_heads_r × head_dim, h]` each
        k: Mat,
        v: Mat,
        /// `[h, heads_r × head_dim]`
        o: Mat,
        /// Qwen2-MoE's q, k and v biases.
        bias: Option<[Mat; 3]>,
        /// Qwen3-MoE's per-head RMSNorm of q and k (`[head_dim]` each).
        qk_norm: Option<[Mat; 2]>,
    },
}

/// One layer's tensors on one TP rank.
#[derive(Clone, Copy, Debug)]
pub struct LayerMats {
    pub input_norm: Mat,
    pub post_norm: Mat,
    pub attn: AttnMats,
    pub ffn: Ffn,
}

/// One TP rank's tensors.
#[derive(Clone, Debug)]
pub struct RankMats {
    /// `[vocab_r, h]` and the first vocabulary row this rank holds.
    pub embed: Mat,
    pub vocab_start: u32,
    pub final_norm: Mat,
    pub lm_head: Mat,
    pub layers: Vec<LayerMats>,
}

/// The attention's dimensions on one TP rank.
#[derive(Clone, Copy, Debug)]
pub enum AttnDims {
    Mla {
        nope: usize,
        rope: usize,
        v: usize,
        kv_lora: usize,
        /// `None` without q-LoRA.
        q_lora: Option<usize>,
        /// The softmax scale: `(nope + rope)^-½`, times YaRN's `mscale²` where configured.
        scale: f32,
    },
    Gqa {
        head_dim: usize,
        kv_heads_per_rank: usize,
        /// Query heads per KV head.
        group: usize,
    },
}

/// Dimensions of the model the engine runs, on one TP rank.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub hidden: usize,
    pub heads_per_rank: usize,
    pub attn: AttnDims,
    pub experts: usize,
    pub eps: f32,
    pub route: Rule,
}

impl Dims {
    /// Values cached per token and layer on one rank: MLA's compressed KV and shared rotary
    /// key; GQA's keys then values of the rank's KV heads.
    pub fn kv_width(&self) -> usize {
        match self.attn {
            AttnDims::Mla { kv_lora, rope, .. } => kv_lora + rope,
            AttnDims::Gqa {
                head_dim,
                kv_heads_per_rank,
                ..
            } => 2 * kv_heads_per_rank * head_dim,
        }
    }
}

/// The KV cache inside one device's KV allocation: `blocks` blocks of `block_tokens` tokens;
/// block-major, then layer, then token, each token `kv_width` bf16 values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLayout {
    pub blocks: u32,
    pub block_tokens: u32,
    pub layers: u32,
    pub token_bytes: u64,
}

impl KvLayout {
    /// Byte offset of token `slot` of `block` in `layer`.
    pub fn offset(&self, block: u32, layer: u32, slot: u32) -> u64 {
        ((u64::from(block) * u64::from(self.layers) + u64::from(layer))
            * u64::from(self.block_tokens)
            + u64::from(slot))
            * self.token_bytes
    }

    /// Bytes of one block's tokens for one layer (contiguous).
    pub fn run_bytes(&self) -> u64 {
        u64::from(self.block_tokens) * self.token_bytes
    }
}

/// Everything the engine needs to find weights, for a model under a TP degree.
#[derive(Clone, Debug)]
pub struct Layout {
    pub tp: u32,
    pub dims: Dims,
    pub rope: Rope,
    pub ranks: Vec<RankMats>,
    /// Offsets inside an expert pack (slot 0-relative; add the slot's offset).
    pub expert: Mlp,
    pub moe_layers: Vec<bool>,
}

fn unsupported(reason: impl Into<String>) -> EngineError {
    EngineError::Unsupported {
        reason: reason.into(),
    }
}

fn find(pack: &Pack, slot: usize, name: &str) -> Result<Mat, EngineError> {
    let t: &PackedTensor = pack
        .tensor(name)
        .ok_or_else(|| unsupported(format!("tensor {name} is not in its pack")))?;
    let (rows, cols) = match t.shape.as_slice() {
        [n] => (1, *n as usize),
        [r, c] => (*r as usize, *c as usize),
        s => return Err(unsupported(format!("tensor {name} has shape {s:?}"))),
    };
    let dtype = t.spec.dtype;
    if !matches!(dtype, DType::Bf16 | DType::F16 | DType::F32) {
        return Err(unsupported(format!(
            "tensor {name} is {}: the engine computes from bf16, f16 or f32 weights",
            dtype.name()
        )));
    }
    Ok(Mat {
        slot,
        offset: t.offset,
        rows,
        cols,
        dtype,
    })
}

fn mlp(pack: &Pack, slot: usize, prefix: &str) -> Result<Mlp, EngineError> {
    Ok(Mlp {
        gate: find(pack, slot, &format!("{prefix}.gate_proj.weight"))?,
        up: find(pack, slot, &format!("{prefix}.up_proj.weight"))?,
        down: find(pack, slot, &format!("{prefix}.down_proj.weight"))?,
    })
}

/// MLA's dimensions, or why the engine cannot run `model`'s MLA under TP `tp`.
fn mla_dims(model: &ModelSpec, tp: u32) -> Result<(AttnDims, Rope), EngineError> {
    let Attention::Mla {
        q_lora_rank,
        kv_lora_rank,
        qk_nope_head_dim,
        qk_rope_head_dim,
        v_head_dim,
        rope_interleave,
    } = model.attention
    else {
        unreachable!("mla_dims on a GQA model")
    };
    if !matches!(model.family, Family::DeepseekV2 | Family::DeepseekV3) {
        return Err(unsupported(format!(
            "{} is {}: the engine's MLA runs DeepSeek-V2 and DeepSeek-V3",
            model.name, model.family
        )));
    }
    if !model.num_attention_heads.is_multiple_of(tp) {
        return Err(unsupported(format!(
            "{} attention heads do not split evenly over TP {tp}",
            model.num_attention_heads
        )));
    }
    if !qk_rope_head_dim.is_multiple_of(2) {
        return Err(unsupported("the rotary head dim must be even"));
    }
    let qk = f64::from(qk_nope_head_dim + qk_rope_head_dim);
    let softmax = model
        .rope_scaling
        .as_ref()
        .map_or(1.0, |y| y.softmax_factor());
    let dims = AttnDims::Mla {
        nope: qk_nope_head_dim as usize,
        rope: qk_rope_head_dim as usize,
        v: v_head_dim as usize,
        kv_lora: kv_lora_rank as usize,
        q_lora: q_lora_rank.map(|r| r as usize),
        scale: (qk.powf(-0.5) * softmax) as f32,
    };
    let rope = Rope::for_model(model, qk_rope_head_dim as usize, rope_interleave);
    Ok((dims, rope))
}

/// Layer `p`'s MLA tensors in `pack` (`q_lora`: whether the query goes through a latent).
fn mla_mats(pack: &Pack, slot: usize, p: &str, q_lora: bool) -> Result<AttnMats, EngineError> {
    let a = format!("{p}.self_attn");
    let q = if q_lora {
        QProj::Lora {
            a: find(pack, slot, &format!("{a}.q_a_proj.weight"))?,
            norm: find(pack, slot, &format!("{a}.q_a_layernorm.weight"))?,
            b: find(pack, slot, &format!("{a}.q_b_proj.weight"))?,
        }
    } else {
        QProj::Direct(find(pack, slot, &format!("{a}.q_proj.weight"))?)
    };
    Ok(AttnMats::Mla {
        q,
        kv_a: find(pack, slot, &format!("{a}.kv_a_proj_with_mqa.weight"))?,
        kv_a_norm: find(pack, slot, &format!("{a}.kv_a_layernorm.weight"))?,
        kv_b: find(pack, slot, &format!("{a}.kv_b_proj.weight"))?,
        o: find(pack, slot, &format!("{a}.o_proj.weight"))?,
    })
}

/// GQA's dimensions, or why the engine cannot run `model`'s GQA under TP `tp`: query heads
/// split evenly over the ranks; KV heads too, or, with fewer KV heads than ranks, each rank
/// holds the one head its query heads share (the split `tensors.rs` cuts).
fn gqa_dims(model: &ModelSpec, tp: u32) -> Result<(AttnDims, Rope), EngineError> {
    let Attention::Gqa {
        num_kv_heads,
        head_dim,
        ..
    } = model.attention
    else {
        unreachable!("gqa_dims on an MLA model")
    };
    if !matches!(
        model.family,
        Family::Qwen2Moe | Family::Qwen3Moe | Family::Mixtral
    ) {
        return Err(unsupported(format!(
            "{} is {}: the engine's GQA runs Qwen2-MoE, Qwen3-MoE and Mixtral",
            model.name, model.family
        )));
    }
    let heads = model.num_attention_heads;
    if num_kv_heads == 0 || !heads.is_multiple_of(num_kv_heads) {
        return Err(unsupported(format!(
            "{heads} attention heads do not form equal groups over {num_kv_heads} KV heads"
        )));
    }
    if !heads.is_multiple_of(tp) {
        return Err(unsupported(format!(
            "{heads} attention heads do not split evenly over TP {tp}"
        )));
    }
    let kv_ok = if num_kv_heads >= tp {
        num_kv_heads.is_multiple_of(tp)
    } else {
        tp.is_multiple_of(num_kv_heads)
    };
    if !kv_ok {
        return Err(unsupported(format!(
            "{num_kv_heads} KV heads neither split evenly over TP {tp} nor replicate evenly \
             across it"
        )));
    }
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(unsupported(format!(
            "head_dim {head_dim}: rotary embedding needs an even, non-zero head dim"
        )));
    }
    let dims = AttnDims::Gqa {
        head_dim: head_dim as usize,
        kv_heads_per_rank: num_kv_heads.div_ceil(tp) as usize,
        group: (heads / num_kv_heads) as usize,
    };
    let rope = Rope::for_model(model, head_dim as usize, false);
    Ok((dims, rope))
}

/// Layer `p`'s GQA tensors in `pack`.
fn gqa_mats(model: &ModelSpec, pack: &Pack, slot: usize, p: &str) -> Result<AttnMats, EngineError> {
    let Attention::Gqa {
        qkv_bias, qk_norm, ..
    } = model.attention
    else {
        unreachable!("gqa_mats on an MLA model")
    };
    let a = format!("{p}.self_attn");
    let m = |n: &str| find(pack, slot, &format!("{a}.{n}"));
    let bias = if qkv_bias {
        Some([m("q_proj.bias")?, m("k_proj.bias")?, m("v_proj.bias")?])
    } else {
        None
    };
    let qk_norm = if qk_norm {
        Some([m("q_norm.weight")?, m("k_norm.weight")?])
    } else {
        None
    };
    Ok(AttnMats::Gqa {
        q: m("q_proj.weight")?,
        k: m("k_proj.weight")?,
        v: m("v_proj.weight")?,
        o: m("o_proj.weight")?,
        bias,
        qk_norm,
    })
}

/// Layer `p`'s MoE tensors (router, shared experts) in `pack`.
fn moe_mats(model: &ModelSpec, pack: &Pack, slot: usize, p: &str) -> Result<Ffn, EngineError> {
    let t = |n: &str| find(pack, slot, &format!("{p}.{n}"));
    let (router, shared, shared_gate) = match model.family {
        Family::Mixtral => (t("block_sparse_moe.gate.weight")?, None, None),
        Family::Qwen2Moe if model.shared_expert_intermediate_size > 0 => (
            t("mlp.gate.weight")?,
            Some(mlp(pack, slot, &format!("{p}.mlp.shared_expert"))?),
            Some(t("mlp.shared_expert_gate.weight")?),
        ),
        _ if model.shared_expert_intermediate_size > 0 => (
            t("mlp.gate.weight")?,
            Some(mlp(pack, slot, &format!("{p}.mlp.shared_experts"))?),
            None,
        ),
        _ => (t("mlp.gate.weight")?, None, None),
    };
    let correction_bias = if model.routing.correction_bias {
        Some(find(
            pack,
            slot,
            &format!("{p}.mlp.gate.e_score_correction_bias"),
        )?)
    } else {
        None
    };
    Ok(Ffn::Moe {
        router,
        correction_bias,
        shared,
        shared_gate,
    })
}

/// A routed expert's tensors, inside its pack: Mixtral names them `w1` (gate), `w3` (up) and
/// `w2` (down).
fn expert_mlp(model: &ModelSpec, pack: &Pack, layer: u32) -> Result<Mlp, EngineError> {
    if model.family == Family::Mixtral {
        let n = |w: &str| {
            find(
                pack,
                0,
                &format!("model.layers.{layer}.block_sparse_moe.experts.0.{w}.weight"),
            )
        };
        Ok(Mlp {
            gate: n("w1")?,
            up: n("w3")?,
            down: n("w2")?,
        })
    } else {
        mlp(pack, 0, &format!("model.layers.{layer}.mlp.experts.0"))
    }
}

impl Layout {
    /// The layout of `model` under TP `tp`, or why the engine cannot run it.
    pub fn new(model: &ModelSpec, tp: u32) -> Result<Self, EngineError> {
        let mla = matches!(model.attention, Attention::Mla { .. });
        let q_lora = matches!(
            model.attention,
            Attention::Mla {
                q_lora_rank: Some(_),
                ..
            }
        );
        let (attn, rope) = if mla {
            mla_dims(model, tp)?
        } else {
            gqa_dims(model, tp)?
        };
        let dims = Dims {
            hidden: model.hidden_size as usize,
            heads_per_rank: (model.num_attention_heads / tp) as usize,
            attn,
            experts: model.num_routed_experts as usize,
            eps: model.rms_norm_eps as f32,
            route: Rule::new(&model.routing, model.top_k),
        };
        let mut ranks = Vec::with_capacity(tp as usize);
        for r in 0..tp {
            let packs = model.non_expert_packs(tp, r);
            let globals = &packs[0];
            let embed = find(globals, 0, "model.embed_tokens.weight")?;
            let lm_head = if model.tie_word_embeddings {
                embed
            } else {
                find(globals, 0, "lm_head.weight")?
            };
            let vocab_start = crate::model::even_range(u64::from(model.vocab_size), tp, r).0 as u32;
            let mut layers = Vec::with_capacity(model.num_layers as usize);
            for l in 0..model.num_layers {
                let slot = l as usize + 1;
                let pack = packs
                    .get(slot)
                    .ok_or_else(|| unsupported(format!("layer {l} has no pack")))?;
                let p = format!("model.layers.{l}");
                let ffn = if model.is_moe_layer(l) {
                    moe_mats(model, pack, slot, &p)?
                } else {
                    Ffn::Dense(mlp(pack, slot, &format!("{p}.mlp"))?)
                };
                layers.push(LayerMats {
                    input_norm: find(pack, slot, &format!("{p}.input_layernorm.weight"))?,
                    post_norm: find(pack, slot, &format!("{p}.post_attention_layernorm.weight"))?,
                    attn: if mla {
                        mla_mats(pack, slot, &p, q_lora)?
                    } else {
                        gqa_mats(model, pack, slot, &p)?
                    },
                    ffn,
                });
            }
            ranks.push(RankMats {
                embed,
                vocab_start,
                final_norm: find(globals, 0, "model.norm.weight")?,
                lm_head,
                layers,
            });
        }
        let first = model.moe_layers().first().copied().unwrap_or(0);
        let ep = model.expert_pack(first, 0);
        let expert = expert_mlp(model, &ep, first)?;
        Ok(Self {
            tp,
            dims,
            rope,
            ranks,
            expert,
            moe_layers: (0..model.num_layers)
                .map(|l| model.is_moe_layer(l))
                .collect(),
        })
    }

    /// The KV layout of a KV allocation of `len` bytes.
    pub fn kv_layout(&self, len: u64, block_tokens: u32) -> KvLayout {
        let layers = self.moe_layers.len() as u32;
        let token_bytes = (self.dims.kv_width() * 2) as u64;
        let per_block = u64::from(block_tokens) * u64::from(layers) * token_bytes;
        KvLayout {
            blocks: u32::try_from(len / per_block.max(1)).unwrap_or(u32::MAX),
            block_tokens,
            layers,
            token_bytes,
        }
    }
}
