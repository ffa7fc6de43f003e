//! What a model is, in the words an operator checks before serving it: the family, the
//! attention kind and its cache shape, the routing rule, the dtypes stored and served.

use serde::Serialize;

use super::{Attention, DType, GroupRank, ModelSpec, Scoring};

/// A model's serving-relevant facts (`inspect --json` prints it as `model_summary`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelSummary {
    pub family: String,
    /// `mla` or `gqa`.
    pub attention: &'static str,
    /// The attention's shape, e.g. `MLA kv_lora 512 + rope 64, q-LoRA 1536` or
    /// `GQA 32 heads over 4 KV heads × 128, q/k norm`.
    pub attention_detail: String,
    /// KV cache values per token per layer on one device of TP 1 (bf16 each).
    pub kv_values_per_token_per_layer: u64,
    /// The routing rule, e.g. `softmax top-8 of 128, renormalised`.
    pub routing: String,
    pub dense_layers: u32,
    pub moe_layers: u32,
    pub routed_experts: u32,
    pub shared_experts: u32,
    /// The dtype named by the config.
    pub dtype: DType,
}

impl ModelSummary {
    pub fn of(m: &ModelSpec) -> Self {
        let (attention, attention_detail) = match m.attention {
            Attention::Mla {
                q_lora_rank,
                kv_lora_rank,
                qk_nope_head_dim,
                qk_rope_head_dim,
                v_head_dim,
                ..
            } => (
                "mla",
                format!(
                    "MLA {} heads (nope {qk_nope_head_dim} + rope {qk_rope_head_dim}, v \
                     {v_head_dim}), latent kv_lora {kv_lora_rank} + rope {qk_rope_head_dim}{}",
                    m.num_attention_heads,
                    q_lora_rank.map_or_else(String::new, |r| format!(", q-LoRA {r}"))
                ),
            ),
            Attention::Gqa {
                num_kv_heads,
                head_dim,
                qkv_bias,
                qk_norm,
            } => (
                "gqa",
                format!(
                    "GQA {} heads over {num_kv_heads} KV heads × {head_dim}{}{}",
                    m.num_attention_heads,
                    if qkv_bias { ", q/k/v bias" } else { "" },
                    if qk_norm { ", q/k RMSNorm" } else { "" }
                ),
            ),
        };
        let kv_values_per_token_per_layer = m.kv_bytes_per_token_per_layer(1) / 2;
        let moe_layers = m.moe_layers().len() as u32;
        Self {
            family: m.family.to_string(),
            attention,
            attention_detail,
            kv_values_per_token_per_layer,
            routing: routing_text(m),
            dense_layers: m.num_layers - moe_layers,
            moe_layers,
            routed_experts: m.num_routed_experts,
            shared_experts: m.num_shared_experts,
            dtype: m.dtype,
        }
    }
}

fn routing_text(m: &ModelSpec) -> String {
    let r = &m.routing;
    let mut s = format!(
        "{} top-{} of {}",
        match r.scoring {
            Scoring::Softmax => "softmax",
            Scoring::Sigmoid => "sigmoid",
        },
        m.top_k,
        m.num_routed_experts
    );
    if r.correction_bias {
        s.push_str(", chosen on bias-corrected scores");
    }
    if let Some((n, k)) = r.groups {
        let rank = match r.group_rank {
            GroupRank::Max => "best expert",
            GroupRank::TopTwoSum => "sum of two best",
        };
        s.push_str(&format!(", within the {k} best of {n} groups (by {rank})"));
    }
    if r.normalize {
        s.push_str(", renormalised");
    }
    if r.scaling_factor != 1.0 {
        s.push_str(&format!(", × {}", r.scaling_factor));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_say_what_they_are() {
        let m = crate::model::preset("tiny-moe").unwrap().spec();
        let s = ModelSummary::of(&m);
        assert_eq!(s.family, m.family.to_string());
        assert_eq!(s.dense_layers + s.moe_layers, m.num_layers);
        assert!(s.routing.starts_with("softmax top-"), "{}", s.routing);
    }

    #[test]
    fn routing_names_every_rule_that_applies() {
        let mut m = crate::model::preset("tiny-moe").unwrap().spec();
        m.routing = crate::model::Routing {
            scoring: Scoring::Sigmoid,
            correction_bias: true,
            groups: Some((8, 4)),
            group_rank: GroupRank::TopTwoSum,
            normalize: true,
            scaling_factor: 2.5,
        };
        assert_eq!(
            routing_text(&m),
            format!(
                "sigmoid top-{} of {}, chosen on bias-corrected scores, within the 4 best of 8 \
                 groups (by sum of two best), renormalised, × 2.5",
                m.top_k, m.num_routed_experts
            )
        );
    }
}
