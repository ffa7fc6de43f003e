//! The tensor inventory of a model: every weight with its Hugging Face name, shape, group and
//! how tensor parallelism splits it. Byte sizes per group are sums over this list, so they
//! always agree with what a checkpoint holds.

use serde::Serialize;

use super::{Attention, DType, Family, ModelSpec};

/// What a tensor is for. `Expert` is the only group that expert parallelism moves.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum TensorGroup {
    Embedding,
    Attention,
    Norm,
    DenseMlp,
    SharedExpert,
    Router,
    Expert,
    LmHead,
}

impl TensorGroup {
    pub const fn is_expert(self) -> bool {
        matches!(self, Self::Expert)
    }
}

/// How a tensor is split across the ranks of a TP group.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Every rank holds all of it (norms, routers, MLA down-projections, routed experts).
    Replicated,
    /// Split along dimension 0 (output features, vocabulary): each shard is contiguous.
    Rows,
    /// Split along dimension 1 (input features): each shard is a strided set of row pieces.
    Cols,
    /// Dimension 0 is `heads` equal row groups (GQA's K and V projections): with at least as
    /// many heads as ranks, whole heads are split as evenly as possible; with fewer, rank `r`
    /// holds head `r·heads/tp`, the one its query heads attend with (each head on `tp/heads`
    /// ranks).
    Heads { heads: u32 },
}

/// `[start, end)` in heads of rank `rank`'s share of `heads` heads under TP `tp`.
pub fn head_range(heads: u32, tp: u32, rank: u32) -> (u64, u64) {
    let tp = tp.max(1);
    if heads >= tp {
        even_range(u64::from(heads), tp, rank)
    } else {
        let h = u64::from(rank.min(tp - 1)) * u64::from(heads) / u64::from(tp);
        (h, h + 1)
    }
}

/// One weight tensor.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<u64>,
    pub dtype: DType,
    pub group: TensorGroup,
    pub layer: Option<u32>,
    pub expert: Option<u32>,
    pub split: Split,
}

/// `[start, end)` of part `rank` when `n` is split as evenly as possible into `parts`
/// (the first `n % parts` parts are one larger).
pub fn even_range(n: u64, parts: u32, rank: u32) -> (u64, u64) {
    let parts = u64::from(parts.max(1));
    let rank = u64::from(rank).min(parts - 1);
    let base = n / parts;
    let rem = n % parts;
    let start = rank * base + rank.min(rem);
    let len = base + u64::from(rank < rem);
    (start, start + len)
}

impl TensorSpec {
    pub fn elements(&self) -> u64 {
        self.shape.iter().product()
    }

    pub fn bytes(&self) -> u64 {
        self.elements() * self.dtype.bytes()
    }

    /// The shape of TP rank `rank`'s shard in a group of `tp`.
    pub fn shard_shape(&self, tp: u32, rank: u32) -> Vec<u64> {
        let mut shape = self.shape.clone();
        let dim = match self.split {
            Split::Replicated => return shape,
            Split::Rows => 0,
            Split::Cols => 1,
            Split::Heads { heads } => {
                if let Some(d) = shape.first_mut() {
                    let (a, b) = head_range(heads, tp, rank);
                    *d = (b - a) * (*d / u64::from(heads.max(1)));
                }
                return shape;
            }
        };
        if let Some(d) = shape.get_mut(dim) {
            let (a, b) = even_range(*d, tp, rank);
            *d = b - a;
        }
        shape
    }

    /// Bytes of TP rank `rank`'s shard.
    pub fn shard_bytes(&self, tp: u32, rank: u32) -> u64 {
        self.shard_shape(tp, rank).iter().product::<u64>() * self.dtype.bytes()
    }

    /// The byte ranges of the full tensor that make up a shard, in order. Rows splits give one
    /// range; column splits give one range per row.
    pub fn shard_byte_ranges(&self, tp: u32, rank: u32) -> Vec<(u64, u64)> {
        let elem = self.dtype.bytes();
        match self.split {
            Split::Replicated => vec![(0, self.bytes())],
            Split::Rows => {
                let rows = self.shape.first().copied().unwrap_or(1);
                let row_bytes = self.bytes() / rows.max(1);
                let (a, b) = even_range(rows, tp, rank);
                vec![(a * row_bytes, b * row_bytes)]
            }
            Split::Heads { heads } => {
                let head_bytes = self.bytes() / u64::from(heads.max(1));
                let (a, b) = head_range(heads, tp, rank);
                vec![(a * head_bytes, b * head_bytes)]
            }
            Split::Cols => {
                let rows = self.shape.first().copied().unwrap_or(1);
                let cols = self.shape.get(1).copied().unwrap_or(1);
                let (a, b) = even_range(cols, tp, rank);
                (0..rows)
                    .map(|r| ((r * cols + a) * elem, (r * cols + b) * elem))
                    .collect()
            }
        }
    }
}

/// Bytes per tensor group for the whole model (all layers, all experts, unsharded).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize)]
pub struct GroupSizes {
    pub embedding: u64,
    pub attention: u64,
    pub norm: u64,
    pub dense_mlp: u64,
    pub shared_expert: u64,
    pub router: u64,
    pub routed_experts: u64,
    pub lm_head: u64,
    /// One routed expert of one layer (all its tensors).
    pub one_expert: u64,
    pub total: u64,
    pub parameters: u64,
}

struct Builder {
    out: Vec<TensorSpec>,
    dtype: DType,
    fp8_scales: bool,
    /// Whether routed experts are listed (most of DeepSeek-V3's ~45k tensors).
    routed: bool,
}

impl Builder {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        name: String,
        shape: &[u32],
        group: TensorGroup,
        layer: Option<u32>,
        expert: Option<u32>,
        split: Split,
        quantized: bool,
    ) {
        let shape: Vec<u64> = shape.iter().map(|&d| u64::from(d)).collect();
        let fp8 = quantized && self.fp8_scales;
        // In an FP8 release only the linear layers are FP8; the rest stays bf16.
        let dtype = match (quantized, self.fp8_scales) {
            (false, true) => DType::Bf16,
            _ => self.dtype,
        };
        let scale = fp8.then(|| TensorSpec {
            // One f32 scale per 128×128 block, split across TP like the weight.
            name: name.replace(".weight", ".weight_scale_inv"),
            shape: shape.iter().map(|d| d.div_ceil(128)).collect(),
            dtype: DType::F32,
            group,
            layer,
            expert,
            split,
        });
        self.out.push(TensorSpec {
            name,
            shape,
            dtype,
            group,
            layer,
            expert,
            split,
        });
        self.out.extend(scale);
    }
}

impl Builder {
    /// A SwiGLU MLP of width `width` under `prefix`: gate and up split by rows across TP,
    /// down by columns (Megatron's column- then row-parallel pair).
    fn push_mlp(&mut self, prefix: &str, width: u32, h: u32, group: TensorGroup, layer: u32) {
        for (n, shape, split) in [
            ("gate_proj", [width, h], Split::Rows),
            ("up_proj", [width, h], Split::Rows),
            ("down_proj", [h, width], Split::Cols),
        ] {
            let name = format!("{prefix}.{n}.weight");
            self.push(name, &shape, group, Some(layer), None, split, true);
        }
    }
}

impl ModelSpec {
    /// Every weight tensor, in checkpoint order: embeddings, then per layer attention, norms and
    /// MLP or MoE, then the final norm and the LM head.
    pub fn tensors(&self) -> Vec<TensorSpec> {
        self.inventory(true)
    }

    /// [`tensors`](Self::tensors) without the routed experts, built without them (cheap for
    /// the planner, which needs only the non-expert packs).
    pub fn non_expert_tensors(&self) -> Vec<TensorSpec> {
        self.inventory(false)
    }

    fn inventory(&self, routed: bool) -> Vec<TensorSpec> {
        use Split::*;
        use TensorGroup as G;
        let mut b = Builder {
            out: Vec::new(),
            dtype: self.dtype,
            fp8_scales: self.dtype == DType::Fp8E4m3,
            routed,
        };
        let h = self.hidden_size;
        b.push(
            "model.embed_tokens.weight".into(),
            &[self.vocab_size, h],
            G::Embedding,
            None,
            None,
            Rows,
            false,
        );
        for l in 0..self.num_layers {
            let p = format!("model.layers.{l}");
            let ly = Some(l);
            b.push(
                format!("{p}.input_layernorm.weight"),
                &[h],
                G::Norm,
                ly,
                None,
                Replicated,
                false,
            );
            self.attention_tensors(&mut b, &p, l);
            b.push(
                format!("{p}.post_attention_layernorm.weight"),
                &[h],
                G::Norm,
                ly,
                None,
                Replicated,
                false,
            );
            if self.is_moe_layer(l) {
                self.moe_tensors(&mut b, &p, l);
            } else {
                b.push_mlp(
                    &format!("{p}.mlp"),
                    self.intermediate_size,
                    h,
                    G::DenseMlp,
                    l,
                );
            }
        }
        b.push(
            "model.norm.weight".into(),
            &[h],
            G::Norm,
            None,
            None,
            Replicated,
            false,
        );
        if !self.tie_word_embeddings {
            b.push(
                "lm_head.weight".into(),
                &[self.vocab_size, h],
                G::LmHead,
                None,
                None,
                Rows,
                false,
            );
        }
        b.out
    }

    fn attention_tensors(&self, b: &mut Builder, p: &str, l: u32) {
        use Split::*;
        use TensorGroup as G;
        let h = self.hidden_size;
        let heads = self.num_attention_heads;
        let ly = Some(l);
        match self.attention {
            Attention::Mla {
                q_lora_rank,
                kv_lora_rank,
                qk_nope_head_dim,
                qk_rope_head_dim,
                v_head_dim,
                ..
            } => {
                let q_head = qk_nope_head_dim + qk_rope_head_dim;
                match q_lora_rank {
                    None => b.push(
                        format!("{p}.self_attn.q_proj.weight"),
                        &[heads * q_head, h],
                        G::Attention,
                        ly,
                        None,
                        Rows,
                        true,
                    ),
                    Some(r) => {
                        b.push(
                            format!("{p}.self_attn.q_a_proj.weight"),
                            &[r, h],
                            G::Attention,
                            ly,
                            None,
                            Replicated,
                            true,
                        );
                        b.push(
                            format!("{p}.self_attn.q_a_layernorm.weight"),
                            &[r],
                            G::Norm,
                            ly,
                            None,
                            Replicated,
                            false,
                        );
                        b.push(
                            format!("{p}.self_attn.q_b_proj.weight"),
                            &[heads * q_head, r],
                            G::Attention,
                            ly,
                            None,
                            Rows,
                            true,
                        );
                    }
                }
                b.push(
                    format!("{p}.self_attn.kv_a_proj_with_mqa.weight"),
                    &[kv_lora_rank + qk_rope_head_dim, h],
                    G::Attention,
                    ly,
                    None,
                    Replicated,
                    true,
                );
                b.push(
                    format!("{p}.self_attn.kv_a_layernorm.weight"),
                    &[kv_lora_rank],
                    G::Norm,
                    ly,
                    None,
                    Replicated,
                    false,
                );
                b.push(
                    format!("{p}.self_attn.kv_b_proj.weight"),
                    &[heads * (qk_nope_head_dim + v_head_dim), kv_lora_rank],
                    G::Attention,
                    ly,
                    None,
                    Rows,
                    true,
                );
                b.push(
                    format!("{p}.self_attn.o_proj.weight"),
                    &[h, heads * v_head_dim],
                    G::Attention,
                    ly,
                    None,
                    Cols,
                    true,
                );
            }
            Attention::Gqa {
                num_kv_heads,
                head_dim,
                qkv_bias,
                qk_norm,
            } => {
                // Whole KV heads per rank; a single head is simply on every rank.
                let kv_split = if num_kv_heads >= 2 {
                    Heads {
                        heads: num_kv_heads,
                    }
                } else {
                    Replicated
                };
                for (n, out, split) in [
                    ("q_proj", heads * head_dim, Rows),
                    ("k_proj", num_kv_heads * head_dim, kv_split),
                    ("v_proj", num_kv_heads * head_dim, kv_split),
                ] {
                    b.push(
                        format!("{p}.self_attn.{n}.weight"),
                        &[out, h],
                        G::Attention,
                        ly,
                        None,
                        split,
                        true,
                    );
                    if qkv_bias {
                        b.push(
                            format!("{p}.self_attn.{n}.bias"),
                            &[out],
                            G::Attention,
                            ly,
                            None,
                            split,
                            false,
                        );
                    }
                }
                b.push(
                    format!("{p}.self_attn.o_proj.weight"),
                    &[h, heads * head_dim],
                    G::Attention,
                    ly,
                    None,
                    Cols,
                    true,
                );
                if qk_norm {
                    b.push(
                        format!("{p}.self_attn.q_norm.weight"),
                        &[head_dim],
                        G::Norm,
                        ly,
                        None,
                        Replicated,
                        false,
                    );
                    b.push(
                        format!("{p}.self_attn.k_norm.weight"),
                        &[head_dim],
                        G::Norm,
                        ly,
                        None,
                        Replicated,
                        false,
                    );
                }
            }
        }
    }

    fn moe_tensors(&self, b: &mut Builder, p: &str, l: u32) {
        use Split::*;
        use TensorGroup as G;
        let h = self.hidden_size;
        let ly = Some(l);
        let e = self.num_routed_experts;
        let moe = match self.family {
            Family::Mixtral => "block_sparse_moe",
            _ => "mlp",
        };
        b.push(
            format!("{p}.{moe}.gate.weight"),
            &[e, h],
            G::Router,
            ly,
            None,
            Replicated,
            false,
        );
        if self.routing.correction_bias {
            // noaux_tc routing: a per-expert bias added to the scores before top-k.
            b.out.push(TensorSpec {
                name: format!("{p}.mlp.gate.e_score_correction_bias"),
                shape: vec![u64::from(e)],
                dtype: DType::F32,
                group: G::Router,
                layer: ly,
                expert: None,
                split: Replicated,
            });
        }
        let listed = if b.routed { e } else { 0 };
        for x in 0..listed {
            self.expert_into(b, p, l, x);
        }
        let si = self.shared_expert_intermediate_size;
        if si > 0 {
            let (sname, gate_vec) = match self.family {
                Family::Qwen2Moe => ("shared_expert", true),
                _ => ("shared_experts", false),
            };
            b.push_mlp(&format!("{p}.mlp.{sname}"), si, h, G::SharedExpert, l);
            if gate_vec {
                b.push(
                    format!("{p}.mlp.shared_expert_gate.weight"),
                    &[1, h],
                    G::SharedExpert,
                    ly,
                    None,
                    Replicated,
                    false,
                );
            }
        }
    }

    fn expert_into(&self, b: &mut Builder, p: &str, l: u32, x: u32) {
        let h = self.hidden_size;
        let mi = self.moe_intermediate_size;
        let (moe, names): (&str, [(&str, [u32; 2]); 3]) = if self.family == Family::Mixtral {
            (
                "block_sparse_moe",
                [("w1", [mi, h]), ("w2", [h, mi]), ("w3", [mi, h])],
            )
        } else {
            (
                "mlp",
                [
                    ("gate_proj", [mi, h]),
                    ("up_proj", [mi, h]),
                    ("down_proj", [h, mi]),
                ],
            )
        };
        for (n, shape) in names {
            b.push(
                format!("{p}.{moe}.experts.{x}.{n}.weight"),
                &shape,
                TensorGroup::Expert,
                Some(l),
                Some(x),
                Split::Replicated,
                true,
            );
        }
    }

    /// The tensors of routed expert `expert` of MoE layer `layer`, in checkpoint order.
    /// Built directly rather than filtered from the full list: DeepSeek-V3 has ~45k tensors.
    pub fn expert_tensors(&self, layer: u32, expert: u32) -> Vec<TensorSpec> {
        let mut b = Builder {
            out: Vec::new(),
            dtype: self.dtype,
            fp8_scales: self.dtype == DType::Fp8E4m3,
            routed: true,
        };
        self.expert_into(&mut b, &format!("model.layers.{layer}"), layer, expert);
        b.out
    }

    /// Bytes of one routed expert (all its tensors, scales included).
    pub fn expert_bytes(&self) -> u64 {
        let l = self.moe_layers().first().copied().unwrap_or(0);
        self.expert_tensors(l, 0)
            .iter()
            .map(TensorSpec::bytes)
            .sum()
    }

    /// Bytes per group and parameter count, summed over the inventory.
    pub fn group_sizes(&self) -> GroupSizes {
        let mut s = GroupSizes::default();
        for t in self.tensors() {
            let bytes = t.bytes();
            let slot = match t.group {
                TensorGroup::Embedding => &mut s.embedding,
                TensorGroup::Attention => &mut s.attention,
                TensorGroup::Norm => &mut s.norm,
                TensorGroup::DenseMlp => &mut s.dense_mlp,
                TensorGroup::SharedExpert => &mut s.shared_expert,
                TensorGroup::Router => &mut s.router,
                TensorGroup::Expert => &mut s.routed_experts,
                TensorGroup::LmHead => &mut s.lm_head,
            };
            *slot += bytes;
            s.total += bytes;
            if !t.name.ends_with("weight_scale_inv") {
                s.parameters += t.elements();
            }
        }
        s.one_expert = self.expert_bytes();
        s
    }

    /// Bytes of non-expert weights held by TP rank `rank` of a group of `tp` (its shard of every
    /// non-expert tensor, plus the replicated ones).
    pub fn non_expert_shard_bytes(&self, tp: u32, rank: u32) -> u64 {
        self.non_expert_tensors()
            .iter()
            .map(|t| t.shard_bytes(tp, rank))
            .sum()
    }
}
