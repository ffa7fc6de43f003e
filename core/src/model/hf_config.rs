//! Reading a Hugging Face `config.json` of the DeepSeek-V2/V3, Qwen2-MoE/Qwen3-MoE and Mixtral
//! families into a [`ModelSpec`]. Strict: a missing field, a field of the wrong type, or a field
//! we do not know is an error naming it, so a model is never planned from a half-read config.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{Map, Value};

use super::{Attention, DType, Family, ModelSpec};

/// Why a `config.json` was refused. Causes are part of the message, not chained as `source()`,
/// so a printer that walks the chain names each once.
#[derive(Debug, thiserror::Error)]
pub enum HfConfigError {
    #[error("cannot read {path}: {cause}")]
    Io { path: String, cause: std::io::Error },
    #[error("config.json is not valid JSON: {0}")]
    Json(serde_json::Error),
    #[error("config.json must be a JSON object at the top level")]
    NotObject,
    #[error("config.json: missing field `{field}` (required for model_type `{model_type}`)")]
    Missing { field: String, model_type: String },
    #[error("config.json: field `{field}` must be {expected}, got {got}")]
    WrongType {
        field: String,
        expected: &'static str,
        got: String,
    },
    #[error(
        "config.json: model_type `{value}` is not supported (supported: deepseek_v2, deepseek_v3, qwen2_moe, qwen3_moe, mixtral)"
    )]
    UnknownModelType { value: String },
    #[error(
        "config.json: unknown field `{field}` for model_type `{model_type}` (it may change the model's shapes, so it is not ignored)"
    )]
    UnknownField { field: String, model_type: String },
    #[error("config.json: field `{field}` is {value}, more than the limit of {limit}{what}")]
    TooLarge {
        field: String,
        value: u64,
        limit: u64,
        /// What the value counts, when it is derived (e.g. " bytes of weights").
        what: &'static str,
    },
    #[error(
        "config.json: the weights come to {bytes} bytes, more than the limit of {limit} \
         (from num_hidden_layers, the expert counts and the widths)"
    )]
    WeightsTooLarge { bytes: String, limit: u64 },
    #[error("config.json: field `{field}` has unsupported value {value}: {why}")]
    Unsupported {
        field: String,
        value: String,
        why: &'static str,
    },
}

impl From<serde_json::Error> for HfConfigError {
    fn from(e: serde_json::Error) -> Self {
        Self::Json(e)
    }
}

/// Fields that never change tensor shapes or placement: read past them.
const NEUTRAL: &[&str] = &[
    "_name_or_path",
    "architectures",
    "attention_dropout",
    "aux_loss_alpha",
    "auto_map",
    "bos_token_id",
    "eos_token_id",
    "ep_size",
    "hidden_act",
    "initializer_range",
    "max_position_embeddings",
    "n_group",
    "norm_topk_prob",
    "num_nextn_predict_layers",
    "output_router_logits",
    "pad_token_id",
    "pretraining_tp",
    "routed_scaling_factor",
    "router_aux_loss_coef",
    "router_jitter_noise",
    "scoring_func",
    "seq_aux",
    "topk_group",
    "topk_method",
    "transformers_version",
    "use_cache",
];

struct Fields<'a> {
    obj: &'a Map<String, Value>,
    model_type: String,
    used: BTreeSet<&'static str>,
}

impl<'a> Fields<'a> {
    fn get(&mut self, field: &'static str) -> Option<&'a Value> {
        self.used.insert(field);
        self.obj.get(field).filter(|v| !v.is_null())
    }

    fn missing(&self, field: &str) -> HfConfigError {
        HfConfigError::Missing {
            field: field.to_string(),
            model_type: self.model_type.clone(),
        }
    }

    fn opt_u32(&mut self, field: &'static str) -> Result<Option<u32>, HfConfigError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| wrong(field, "a whole number that fits in 32 bits", v)),
        }
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, HfConfigError> {
        self.opt_u32(field)?.ok_or_else(|| self.missing(field))
    }

    fn opt_f64(&mut self, field: &'static str) -> Result<Option<f64>, HfConfigError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| wrong(field, "a number", v)),
        }
    }

    fn opt_bool(&mut self, field: &'static str) -> Result<Option<bool>, HfConfigError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| wrong(field, "true or false", v)),
        }
    }

    fn u32_list(&mut self, field: &'static str) -> Result<Vec<u32>, HfConfigError> {
        match self.get(field) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| wrong(field, "a list of whole numbers", v))
                })
                .collect(),
            Some(v) => Err(wrong(field, "a list of whole numbers", v)),
        }
    }

    /// Error on the first field neither read nor known to be neutral.
    fn finish(self) -> Result<(), HfConfigError> {
        for key in self.obj.keys() {
            if !self.used.contains(key.as_str()) && !NEUTRAL.contains(&key.as_str()) {
                return Err(HfConfigError::UnknownField {
                    field: key.clone(),
                    model_type: self.model_type,
                });
            }
        }
        Ok(())
    }
}

fn wrong(field: &str, expected: &'static str, v: &Value) -> HfConfigError {
    HfConfigError::WrongType {
        field: field.to_string(),
        expected,
        got: v.to_string(),
    }
}

/// Parse a `config.json` text; `name` becomes the spec's name.
/// DeepSeek's routing keys, each honoured or refused by name, absent ones taking transformers'
/// defaults for the family.
/// - DeepSeek-V2: `scoring_func` softmax, `topk_method` greedy or group_limited_greedy (with
///   `n_group`, `topk_group`), `routed_scaling_factor`; `norm_topk_prob: true` is refused
///   (transformers' DeepSeek-V2 ignores it, DeepSeek's own code applies it: no one answer).
/// - DeepSeek-V3: sigmoid scores, `e_score_correction_bias`, `noaux_tc` (groups ranked by their
///   two best corrected scores), `norm_topk_prob` (default true), `routed_scaling_factor`
///   (default 2.5), `n_group` 8 / `topk_group` 4 by default.
fn read_deepseek_routing(
    f: &mut Fields,
    family: Family,
    experts: u32,
    top_k: u32,
) -> Result<super::Routing, HfConfigError> {
    let v3 = family == Family::DeepseekV3;
    let text = |f: &mut Fields, k: &'static str| -> Result<Option<String>, HfConfigError> {
        match f.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(wrong(k, "a string", v)),
        }
    };
    let scoring = if v3 { "sigmoid" } else { "softmax" };
    if let Some(sf) = text(f, "scoring_func")?
        && sf != scoring
    {
        return Err(HfConfigError::Unsupported {
            field: "scoring_func".into(),
            value: crate::echo::echo(&sf),
            why: if v3 {
                "DeepSeek-V3 scores experts by sigmoid"
            } else {
                "DeepSeek-V2 scores experts by softmax"
            },
        });
    }
    let scaling_factor = f
        .opt_f64("routed_scaling_factor")?
        .unwrap_or(if v3 { 2.5 } else { 1.0 });
    if !(scaling_factor.is_finite() && scaling_factor > 0.0 && scaling_factor <= 1e6) {
        return Err(HfConfigError::Unsupported {
            field: "routed_scaling_factor".into(),
            value: scaling_factor.to_string(),
            why: "must be a positive finite number up to 1e6",
        });
    }
    let normalize = f.opt_bool("norm_topk_prob")?.unwrap_or(v3);
    if normalize && !v3 {
        return Err(HfConfigError::Unsupported {
            field: "norm_topk_prob".into(),
            value: "true".into(),
            why: "transformers' DeepSeek-V2 ignores it while DeepSeek's code renormalises: \
                  the reference answer is ambiguous",
        });
    }
    let n_group = f.opt_u32("n_group")?;
    let topk_group = f.opt_u32("topk_group")?;
    let check_groups = |n: u32, k: u32, min_size: u32| -> Result<(u32, u32), HfConfigError> {
        let ok = n > 0
            && experts.is_multiple_of(n)
            && experts / n >= min_size
            && (1..=n).contains(&k)
            && u64::from(k) * u64::from(experts / n) >= u64::from(top_k);
        if ok {
            Ok((n, k))
        } else {
            Err(HfConfigError::Unsupported {
                field: "n_group".into(),
                value: format!("{n} (topk_group {k}, {experts} experts, top-k {top_k})"),
                why: "n_group must divide the experts (groups of at least two under noaux_tc), \
                      1 ≤ topk_group ≤ n_group, and the kept groups must hold at least top-k \
                      experts",
            })
        }
    };
    let method = text(f, "topk_method")?;
    if v3 {
        if let Some(m) = method.filter(|m| m != "noaux_tc") {
            return Err(HfConfigError::Unsupported {
                field: "topk_method".into(),
                value: crate::echo::echo(&m),
                why: "DeepSeek-V3 routes by noaux_tc",
            });
        }
        let groups = check_groups(n_group.unwrap_or(8), topk_group.unwrap_or(4), 2)?;
        return Ok(super::Routing {
            scoring: super::Scoring::Sigmoid,
            correction_bias: true,
            groups: Some(groups),
            group_rank: super::GroupRank::TopTwoSum,
            normalize,
            scaling_factor,
        });
    }
    let groups = match method.as_deref() {
        None | Some("greedy") => None,
        Some("group_limited_greedy") => {
            let (Some(n), Some(k)) = (n_group, topk_group) else {
                return Err(HfConfigError::Unsupported {
                    field: "topk_method".into(),
                    value: "group_limited_greedy".into(),
                    why: "needs n_group and topk_group",
                });
            };
            Some(check_groups(n, k, 1)?)
        }
        Some(other) => {
            return Err(HfConfigError::Unsupported {
                field: "topk_method".into(),
                value: crate::echo::echo(other),
                why: "only greedy and group_limited_greedy are served",
            });
        }
    };
    Ok(super::Routing {
        scaling_factor,
        groups,
        ..super::Routing::default()
    })
}

pub fn from_hf_config(text: &str, name: &str) -> Result<ModelSpec, HfConfigError> {
    let root: Value = serde_json::from_str(text)?;
    let obj = root.as_object().ok_or(HfConfigError::NotObject)?;
    let model_type = match obj.get("model_type") {
        None => {
            return Err(HfConfigError::Missing {
                field: "model_type".into(),
                model_type: "?".into(),
            });
        }
        Some(Value::String(s)) => s.clone(),
        Some(v) => return Err(wrong("model_type", "a string", v)),
    };
    let family = Family::ALL
        .into_iter()
        .find(|f| f.model_type() == model_type)
        .ok_or_else(|| HfConfigError::UnknownModelType {
            value: model_type.clone(),
        })?;
    let mut f = Fields {
        obj,
        model_type,
        used: BTreeSet::from(["model_type"]),
    };

    let dtype = read_dtype(&mut f)?;
    let hidden_size = f.u32("hidden_size")?;
    let num_attention_heads = f.u32("num_attention_heads")?;
    let num_layers = f.u32("num_hidden_layers")?;
    let vocab_size = f.u32("vocab_size")?;
    let num_kv_heads = f.u32("num_key_value_heads")?;
    let tie_word_embeddings = f.opt_bool("tie_word_embeddings")?.unwrap_or(false);
    let rms_norm_eps = f.opt_f64("rms_norm_eps")?.unwrap_or(1e-6);
    let rope_theta = read_rope_theta(&mut f)?;
    let rope_scaling = read_rope_scaling(&mut f)?;
    if f.opt_bool("mlp_bias")? == Some(true) {
        return Err(HfConfigError::Unsupported {
            field: "mlp_bias".into(),
            value: "true".into(),
            why: "MLP bias tensors are not part of the supported models",
        });
    }
    let top_k = f.u32("num_experts_per_tok")?;
    let gqa_head_dim = |f: &mut Fields| -> Result<u32, HfConfigError> {
        Ok(f.opt_u32("head_dim")?
            .unwrap_or(hidden_size / num_attention_heads.max(1)))
    };

    let mut spec = ModelSpec {
        name: name.to_string(),
        family,
        num_layers,
        first_dense_layers: 0,
        moe_layer_freq: 1,
        decoder_sparse_step: 1,
        mlp_only_layers: Vec::new(),
        hidden_size,
        intermediate_size: 0,
        moe_intermediate_size: 0,
        num_routed_experts: 0,
        num_shared_experts: 0,
        shared_expert_intermediate_size: 0,
        top_k,
        num_attention_heads,
        attention: Attention::Gqa {
            num_kv_heads,
            head_dim: 0,
            qkv_bias: false,
            qk_norm: false,
        },
        vocab_size,
        tie_word_embeddings,
        dtype,
        rms_norm_eps,
        rope_theta,
        rope_scaling,
        routing: super::Routing::default(),
    };
    match family {
        Family::DeepseekV2 | Family::DeepseekV3 => {
            spec.intermediate_size = f.u32("intermediate_size")?;
            spec.moe_intermediate_size = f.u32("moe_intermediate_size")?;
            spec.num_routed_experts = f.u32("n_routed_experts")?;
            // Absent keys take transformers' defaults for the family.
            let v3 = family == Family::DeepseekV3;
            spec.num_shared_experts =
                f.opt_u32("n_shared_experts")?
                    .unwrap_or(if v3 { 1 } else { 2 });
            spec.shared_expert_intermediate_size =
                shared_width(spec.num_shared_experts, spec.moe_intermediate_size)?;
            spec.first_dense_layers =
                f.opt_u32("first_k_dense_replace")?
                    .unwrap_or(if v3 { 3 } else { 0 });
            spec.moe_layer_freq = f.opt_u32("moe_layer_freq")?.unwrap_or(1).max(1);
            let (nope, rope) = (f.u32("qk_nope_head_dim")?, f.u32("qk_rope_head_dim")?);
            spec.attention = Attention::Mla {
                q_lora_rank: f.opt_u32("q_lora_rank")?,
                kv_lora_rank: f.u32("kv_lora_rank")?,
                qk_nope_head_dim: nope,
                qk_rope_head_dim: rope,
                v_head_dim: f.u32("v_head_dim")?,
                // DeepSeek-V2 rotates adjacent pairs; V3 as `rope_interleave` says.
                rope_interleave: if v3 {
                    f.opt_bool("rope_interleave")?.unwrap_or(true)
                } else {
                    true
                },
            };
            spec.routing = read_deepseek_routing(&mut f, family, spec.num_routed_experts, top_k)?;
            if f.opt_bool("attention_bias")? == Some(true) {
                return Err(HfConfigError::Unsupported {
                    field: "attention_bias".into(),
                    value: "true".into(),
                    why: "MLA projection biases are not loaded",
                });
            }
            // transformers 5 writes both derived widths; accepted only when they agree.
            if let Some(hd) = f.opt_u32("head_dim")?
                && hd != rope
            {
                return Err(HfConfigError::Unsupported {
                    field: "head_dim".into(),
                    value: format!("{hd} (qk_rope_head_dim is {rope})"),
                    why: "on an MLA model it is the rotary width and must equal qk_rope_head_dim",
                });
            }
            if let Some(q) = f.opt_u32("qk_head_dim")?
                && u64::from(q) != u64::from(nope) + u64::from(rope)
            {
                return Err(HfConfigError::Unsupported {
                    field: "qk_head_dim".into(),
                    value: format!(
                        "{q} (qk_nope_head_dim + qk_rope_head_dim is {})",
                        u64::from(nope) + u64::from(rope)
                    ),
                    why: "must equal qk_nope_head_dim + qk_rope_head_dim",
                });
            }
        }
        Family::Qwen2Moe | Family::Qwen3Moe => {
            let qwen2 = family == Family::Qwen2Moe;
            spec.intermediate_size = f.u32("intermediate_size")?;
            spec.moe_intermediate_size = f.u32("moe_intermediate_size")?;
            // transformers 5 writes Qwen3-MoE's count as `num_local_experts` (its attribute map
            // aliases `num_experts`); Qwen2-MoE has no alias, so there it is an unknown key.
            spec.num_routed_experts = if qwen2 {
                f.u32("num_experts")?
            } else {
                read_expert_count(&mut f, "num_experts")?
            };
            spec.decoder_sparse_step = match f.opt_u32("decoder_sparse_step")? {
                None => 1,
                Some(0) => {
                    return Err(HfConfigError::Unsupported {
                        field: "decoder_sparse_step".into(),
                        value: "0".into(),
                        why: "must be at least 1 (MoE layers are those with (l + 1) % step == 0)",
                    });
                }
                Some(n) => n,
            };
            spec.mlp_only_layers = f.u32_list("mlp_only_layers")?;
            check_gqa_common(&mut f)?;
            spec.routing = super::Routing {
                // Both families default to plain top-k probabilities.
                normalize: f.opt_bool("norm_topk_prob")?.unwrap_or(false),
                ..super::Routing::default()
            };
            let qkv_bias = if qwen2 {
                spec.shared_expert_intermediate_size = f.u32("shared_expert_intermediate_size")?;
                spec.num_shared_experts = u32::from(spec.shared_expert_intermediate_size > 0);
                read_qwen2_bias(&mut f)?
            } else {
                refuse_true(
                    &mut f,
                    "attention_bias",
                    "Qwen3-MoE's q/k/v/o projection biases are not loaded",
                )?;
                false
            };
            check_qwen_sliding(&mut f, qwen2, num_layers)?;
            if !qwen2 {
                // Not a Qwen3-MoE setting (transformers never reads it); real configs carry it.
                f.get("max_window_layers");
            }
            spec.attention = Attention::Gqa {
                num_kv_heads,
                head_dim: gqa_head_dim(&mut f)?,
                qkv_bias,
                qk_norm: !qwen2,
            };
        }
        Family::Mixtral => {
            // Mixtral's `intermediate_size` is the expert width; it has no dense layers.
            spec.moe_intermediate_size = f.u32("intermediate_size")?;
            spec.intermediate_size = spec.moe_intermediate_size;
            spec.num_routed_experts = read_expert_count(&mut f, "num_local_experts")?;
            check_gqa_common(&mut f)?;
            // transformers' Mixtral renormalises the chosen weights whatever the config says
            // (`norm_topk_prob` is not one of its settings: read past).
            f.get("norm_topk_prob");
            spec.routing = super::Routing {
                normalize: true,
                ..super::Routing::default()
            };
            refuse_true(
                &mut f,
                "attention_bias",
                "Mixtral has no projection biases (transformers builds none)",
            )?;
            if let Some(v) = f.get("sliding_window") {
                return Err(HfConfigError::Unsupported {
                    field: "sliding_window".into(),
                    value: crate::echo::echo(&v.to_string()),
                    why: "sliding-window attention is not served (only null, full causal \
                          attention)",
                });
            }
            // Mixtral's default base when the config names none (transformers' default_theta).
            let named = f.obj.get("rope_theta").is_some_and(|v| !v.is_null())
                || f.obj
                    .get("rope_parameters")
                    .and_then(|p| p.get("rope_theta"))
                    .is_some_and(|v| !v.is_null());
            if !named {
                spec.rope_theta = 1_000_000.0;
            }
            spec.attention = Attention::Gqa {
                num_kv_heads,
                head_dim: gqa_head_dim(&mut f)?,
                qkv_bias: false,
                qk_norm: false,
            };
        }
    }
    validate(&spec)?;
    f.finish()?;
    Ok(spec)
}

/// The keys a YaRN `rope_scaling` / `rope_parameters` may carry beside its type.
const YARN_KEYS: &[&str] = &[
    "factor",
    "original_max_position_embeddings",
    "beta_fast",
    "beta_slow",
    "mscale",
    "mscale_all_dim",
    "attention_factor",
    "truncate",
];

/// Rope scaling from `rope_scaling` (hub configs) or `rope_parameters` (transformers 5): plain
/// RoPE (`None`) or YaRN; any other rope type, or a key not read here, refused by name.
fn read_rope_scaling(f: &mut Fields) -> Result<Option<super::Yarn>, HfConfigError> {
    let mut found = Vec::new();
    for key in ["rope_parameters", "rope_scaling"] {
        match f.get(key) {
            None => {}
            Some(Value::Object(o)) => found.push((key, read_yarn(key, o)?)),
            Some(v) => return Err(wrong(key, "an object", v)),
        }
    }
    match found.as_slice() {
        [] => Ok(None),
        [(_, y)] => Ok(*y),
        [(_, x), (_, y), ..] if x == y => Ok(*x),
        [(_, x), (_, y), ..] => Err(HfConfigError::Unsupported {
            field: "rope_scaling".into(),
            value: format!("{y:?} (rope_parameters says {x:?})"),
            why: "rope_scaling and rope_parameters must agree",
        }),
    }
}

fn read_yarn(key: &str, o: &Map<String, Value>) -> Result<Option<super::Yarn>, HfConfigError> {
    let at = |k: &str| format!("{key}.{k}");
    let kind = match (o.get("rope_type"), o.get("type")) {
        (Some(a), Some(b)) if a != b => {
            return Err(HfConfigError::Unsupported {
                field: at("type"),
                value: format!("{b} (rope_type is {a})"),
                why: "type and rope_type must agree",
            });
        }
        (Some(Value::String(t)), _) | (None, Some(Value::String(t))) => t.as_str(),
        (None, None) => "default",
        (Some(v), _) | (None, Some(v)) => return Err(wrong(&at("rope_type"), "a string", v)),
    };
    let known = |k: &str| matches!(k, "rope_type" | "type" | "rope_theta");
    match kind {
        "default" => {
            if let Some(k) = o.keys().find(|k| !known(k)) {
                return Err(HfConfigError::Unsupported {
                    field: at(k),
                    value: o[k].to_string(),
                    why: "plain RoPE takes no parameters besides rope_theta",
                });
            }
            return Ok(None);
        }
        "yarn" => {}
        other => {
            return Err(HfConfigError::Unsupported {
                field: at("rope_type"),
                value: crate::echo::echo(other),
                why: "only default and yarn rotary embeddings are served",
            });
        }
    }
    if let Some(k) = o
        .keys()
        .find(|k| !known(k) && !YARN_KEYS.contains(&k.as_str()))
    {
        return Err(HfConfigError::Unsupported {
            field: at(k),
            value: o[k].to_string(),
            why: "a YaRN parameter the engine does not apply",
        });
    }
    let num = |k: &str| -> Result<Option<f64>, HfConfigError> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() && (0.0..=1e6).contains(&x) => Ok(Some(x)),
                _ => Err(wrong(&at(k), "a finite number from 0 to 1e6", v)),
            },
        }
    };
    let factor = num("factor")?.ok_or_else(|| HfConfigError::Unsupported {
        field: at("factor"),
        value: "absent".into(),
        why: "YaRN needs its scaling factor",
    })?;
    let original = match o.get("original_max_position_embeddings") {
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                wrong(
                    &at("original_max_position_embeddings"),
                    "a positive whole number that fits in 32 bits",
                    v,
                )
            })?,
        None => {
            return Err(HfConfigError::Unsupported {
                field: at("original_max_position_embeddings"),
                value: "absent".into(),
                why: "YaRN needs the pre-training context length",
            });
        }
    };
    let truncate = match o.get("truncate") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(v) => return Err(wrong(&at("truncate"), "true or false", v)),
    };
    // transformers: `beta_fast or 32`, `beta_slow or 1` (0 means the default too).
    let or = |x: Option<f64>, d: f64| x.filter(|&v| v != 0.0).unwrap_or(d);
    Ok(Some(super::Yarn {
        factor,
        original_max_position_embeddings: original,
        beta_fast: or(num("beta_fast")?, 32.0),
        beta_slow: or(num("beta_slow")?, 1.0),
        mscale: num("mscale")?,
        mscale_all_dim: num("mscale_all_dim")?,
        attention_factor: num("attention_factor")?,
        truncate,
    }))
}

/// The routed-expert count of Qwen3-MoE or Mixtral under either spelling transformers accepts
/// (`canonical` or its alias); both present must agree.
fn read_expert_count(f: &mut Fields, canonical: &'static str) -> Result<u32, HfConfigError> {
    let a = f.opt_u32("num_experts")?;
    let b = f.opt_u32("num_local_experts")?;
    match (a, b) {
        (Some(x), Some(y)) if x != y => Err(HfConfigError::Unsupported {
            field: "num_experts".into(),
            value: format!("{x} (num_local_experts is {y})"),
            why: "the two spellings of the expert count must agree",
        }),
        (Some(x), _) | (None, Some(x)) => Ok(x),
        (None, None) => Err(f.missing(canonical)),
    }
}

/// Keys every GQA family shares that change the math: the activation (SiLU only) and
/// per-layer attention kinds (full attention only).
fn check_gqa_common(f: &mut Fields) -> Result<(), HfConfigError> {
    match f.get("hidden_act") {
        None => {}
        Some(Value::String(s)) if s == "silu" => {}
        Some(Value::String(s)) => {
            return Err(HfConfigError::Unsupported {
                field: "hidden_act".into(),
                value: crate::echo::echo(s),
                why: "the engine's MLPs and experts are SwiGLU (silu)",
            });
        }
        Some(v) => return Err(wrong("hidden_act", "a string", v)),
    }
    match f.get("layer_types") {
        None => {}
        Some(Value::Array(a)) => {
            if let Some(v) = a.iter().find(|v| v.as_str() != Some("full_attention")) {
                return Err(HfConfigError::Unsupported {
                    field: "layer_types".into(),
                    value: crate::echo::echo(&v.to_string()),
                    why: "only full_attention layers are served (no sliding window)",
                });
            }
        }
        Some(v) => return Err(wrong("layer_types", "a list of strings", v)),
    }
    Ok(())
}

/// Refuse `key: true`, naming why.
fn refuse_true(f: &mut Fields, key: &'static str, why: &'static str) -> Result<(), HfConfigError> {
    if f.opt_bool(key)? == Some(true) {
        return Err(HfConfigError::Unsupported {
            field: key.into(),
            value: "true".into(),
            why,
        });
    }
    Ok(())
}

/// Qwen2-MoE's q/k/v biases: `qkv_bias` (transformers 5; default true, as every earlier
/// Qwen2-MoE had them). `attention_bias` is not a Qwen2-MoE setting; present, it must agree.
fn read_qwen2_bias(f: &mut Fields) -> Result<bool, HfConfigError> {
    let qkv = f.opt_bool("qkv_bias")?.unwrap_or(true);
    if let Some(ab) = f.opt_bool("attention_bias")?
        && ab != qkv
    {
        return Err(HfConfigError::Unsupported {
            field: "attention_bias".into(),
            value: format!("{ab} (qkv_bias is {qkv})"),
            why: "Qwen2-MoE's q/k/v biases follow qkv_bias; the two must agree",
        });
    }
    Ok(qkv)
}

/// Qwen's sliding window, refused wherever transformers would apply it: Qwen3-MoE on every
/// layer when `use_sliding_window` and `sliding_window` is set; Qwen2-MoE on the layers its
/// `layer_types` name (by default every other layer below `max_window_layers` when
/// `use_sliding_window`).
fn check_qwen_sliding(f: &mut Fields, qwen2: bool, layers: u32) -> Result<(), HfConfigError> {
    let use_sw = f.opt_bool("use_sliding_window")?.unwrap_or(false);
    let window = f.get("sliding_window");
    if let Some(v) = window
        && !v.is_u64()
    {
        return Err(wrong("sliding_window", "a whole number or null", v));
    }
    let max_window_layers = f.opt_u32("max_window_layers")?;
    let applies = if qwen2 {
        // An explicit `layer_types` (checked to be all full attention) decides; else the
        // default: layer 0 slides as soon as any layer is below max_window_layers.
        let explicit = f.obj.get("layer_types").is_some_and(|v| !v.is_null());
        !explicit && use_sw && max_window_layers.unwrap_or(28).min(layers) > 0
    } else {
        use_sw && window.is_some()
    };
    if applies {
        return Err(HfConfigError::Unsupported {
            field: "use_sliding_window".into(),
            value: format!(
                "true (sliding_window {})",
                window.map_or("null".into(), Value::to_string)
            ),
            why: "sliding-window attention is not served",
        });
    }
    Ok(())
}

/// `rope_theta` at the top level (transformers 4) or in `rope_parameters` (transformers 5);
/// both present must agree.
fn read_rope_theta(f: &mut Fields) -> Result<f64, HfConfigError> {
    let top = f.opt_f64("rope_theta")?;
    let nested = match f.get("rope_parameters").and_then(|p| p.get("rope_theta")) {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_f64()
                .ok_or_else(|| wrong("rope_parameters.rope_theta", "a number", v))?,
        ),
    };
    match (top, nested) {
        (Some(a), Some(b)) if a != b => Err(HfConfigError::Unsupported {
            field: "rope_theta".into(),
            value: format!("{a} (rope_parameters.rope_theta is {b})"),
            why: "the two must agree",
        }),
        _ => Ok(nested.or(top).unwrap_or(10000.0)),
    }
}

fn read_dtype(f: &mut Fields) -> Result<DType, HfConfigError> {
    let name = match f.get("torch_dtype").or_else(|| f.get("dtype")) {
        None => return Err(f.missing("torch_dtype")),
        Some(Value::String(s)) => s.clone(),
        Some(v) => return Err(wrong("torch_dtype", "a string", v)),
    };
    let base = match name.as_str() {
        "bfloat16" => DType::Bf16,
        "float16" => DType::F16,
        "float32" => DType::F32,
        other => {
            return Err(HfConfigError::Unsupported {
                field: "torch_dtype".into(),
                value: format!("\"{other}\""),
                why: "expected bfloat16, float16 or float32",
            });
        }
    };
    let Some(q) = f.get("quantization_config") else {
        return Ok(base);
    };
    let method = q.get("quant_method").and_then(Value::as_str).unwrap_or("");
    let fmt = q.get("fmt").and_then(Value::as_str).unwrap_or("e4m3");
    if method == "fp8" && fmt == "e4m3" {
        Ok(DType::Fp8E4m3)
    } else {
        Err(HfConfigError::Unsupported {
            field: "quantization_config".into(),
            value: q.to_string(),
            why: "only block-wise fp8 e4m3 (DeepSeek-V3's release) is understood",
        })
    }
}

/// Layers: DeepSeek-V3 has 61.
pub const MAX_LAYERS: u32 = 1024;
/// Routed experts per layer: DeepSeek-V3 has 256.
pub const MAX_EXPERTS: u32 = 4096;
/// Shared experts per layer: DeepSeek has 1 or 2.
pub const MAX_SHARED_EXPERTS: u32 = 256;
/// Attention (and KV) heads: DeepSeek-V3 has 128.
pub const MAX_HEADS: u32 = 4096;
/// Vocabulary: DeepSeek-V3 has 129280.
pub const MAX_VOCAB: u32 = 1 << 22;
/// Any one width (hidden, FFN, LoRA rank, head dim): DeepSeek-V3's widest is 18432.
pub const MAX_DIM: u32 = 1 << 20;
/// A product of widths that is one side of a matrix (heads × head dim, shared experts × width).
pub const MAX_MATRIX_SIDE: u64 = 1 << 24;
/// Routed experts over all layers, each a few tensors in the inventory: DeepSeek-V3 has 14848.
pub const MAX_TOTAL_EXPERTS: u64 = 1 << 18;
/// Bytes of weights: DeepSeek-V3 in bf16 is 1.3 TiB.
pub const MAX_MODEL_BYTES: u64 = 64 << 40;

fn too_large(field: &str, value: u64, limit: u64, what: &'static str) -> HfConfigError {
    HfConfigError::TooLarge {
        field: field.into(),
        value,
        limit,
        what,
    }
}

/// DeepSeek's shared-expert width, `n_shared_experts × moe_intermediate_size`, checked.
fn shared_width(n: u32, width: u32) -> Result<u32, HfConfigError> {
    if n > MAX_SHARED_EXPERTS {
        return Err(too_large(
            "n_shared_experts",
            n.into(),
            MAX_SHARED_EXPERTS.into(),
            "",
        ));
    }
    if width > MAX_DIM {
        return Err(too_large(
            "moe_intermediate_size",
            width.into(),
            MAX_DIM.into(),
            "",
        ));
    }
    let w = u64::from(n) * u64::from(width);
    if w > MAX_MATRIX_SIDE {
        return Err(too_large(
            "n_shared_experts",
            w,
            MAX_MATRIX_SIDE,
            " (n_shared_experts × moe_intermediate_size)",
        ));
    }
    Ok(w as u32)
}

/// The config key of the routed-expert count in `family`'s configs.
fn experts_key(family: Family) -> &'static str {
    match family {
        Family::DeepseekV2 | Family::DeepseekV3 => "n_routed_experts",
        Family::Qwen2Moe | Family::Qwen3Moe => "num_experts",
        Family::Mixtral => "num_local_experts",
    }
}

impl ModelSpec {
    /// Checks every count and width against its bound, and the derived sizes (matrix sides,
    /// experts over all layers, bytes of weights) with checked arithmetic, before anything is
    /// sized from the spec. Errors name the `config.json` key, the value and the bound.
    pub fn check_limits(&self) -> Result<(), HfConfigError> {
        let s = self;
        let ffn_key = if s.family == Family::Mixtral {
            "intermediate_size"
        } else {
            "moe_intermediate_size"
        };
        let mut counts: Vec<(&str, u32, u32)> = vec![
            ("num_hidden_layers", s.num_layers, MAX_LAYERS),
            (experts_key(s.family), s.num_routed_experts, MAX_EXPERTS),
            ("num_experts_per_tok", s.top_k, MAX_EXPERTS),
            ("n_shared_experts", s.num_shared_experts, MAX_SHARED_EXPERTS),
            ("num_attention_heads", s.num_attention_heads, MAX_HEADS),
            ("vocab_size", s.vocab_size, MAX_VOCAB),
            ("hidden_size", s.hidden_size, MAX_DIM),
            ("intermediate_size", s.intermediate_size, MAX_DIM),
            (ffn_key, s.moe_intermediate_size, MAX_DIM),
            (
                "shared_expert_intermediate_size",
                s.shared_expert_intermediate_size,
                MAX_MATRIX_SIDE as u32,
            ),
            ("first_k_dense_replace", s.first_dense_layers, MAX_LAYERS),
            ("moe_layer_freq", s.moe_layer_freq, MAX_LAYERS),
            ("decoder_sparse_step", s.decoder_sparse_step, MAX_LAYERS),
            (
                "mlp_only_layers",
                u32::try_from(s.mlp_only_layers.len()).unwrap_or(u32::MAX),
                MAX_LAYERS,
            ),
        ];
        // Matrix sides built from products, in u64 so nothing wraps.
        let mut sides: Vec<(&str, u64)> = Vec::new();
        let heads = u64::from(s.num_attention_heads);
        match s.attention {
            Attention::Mla {
                q_lora_rank,
                kv_lora_rank,
                qk_nope_head_dim,
                qk_rope_head_dim,
                v_head_dim,
                ..
            } => {
                counts.extend([
                    ("q_lora_rank", q_lora_rank.unwrap_or(0), MAX_DIM),
                    ("kv_lora_rank", kv_lora_rank, MAX_DIM),
                    ("qk_nope_head_dim", qk_nope_head_dim, MAX_DIM),
                    ("qk_rope_head_dim", qk_rope_head_dim, MAX_DIM),
                    ("v_head_dim", v_head_dim, MAX_DIM),
                ]);
                let (nope, rope, v) = (
                    u64::from(qk_nope_head_dim),
                    u64::from(qk_rope_head_dim),
                    u64::from(v_head_dim),
                );
                sides.extend([
                    ("num_attention_heads", heads * (nope + rope)),
                    ("num_attention_heads", heads * (nope + v)),
                    ("num_attention_heads", heads * v),
                ]);
            }
            Attention::Gqa {
                num_kv_heads,
                head_dim,
                ..
            } => {
                counts.extend([
                    ("num_key_value_heads", num_kv_heads, MAX_HEADS),
                    ("head_dim", head_dim, MAX_DIM),
                ]);
                sides.extend([
                    ("num_attention_heads", heads * u64::from(head_dim)),
                    (
                        "num_key_value_heads",
                        u64::from(num_kv_heads) * u64::from(head_dim),
                    ),
                ]);
            }
        }
        for (field, v, limit) in counts {
            if v > limit {
                return Err(too_large(field, v.into(), limit.into(), ""));
            }
        }
        for (field, v) in sides {
            if v > MAX_MATRIX_SIDE {
                return Err(too_large(
                    field,
                    v,
                    MAX_MATRIX_SIDE,
                    " as a matrix side (heads × head width)",
                ));
            }
        }
        // Bounded above, the inventory is small enough to build; sum it checked.
        let moe_layers = s.moe_layers().len() as u64;
        let experts = moe_layers * u64::from(s.num_routed_experts);
        if experts > MAX_TOTAL_EXPERTS {
            return Err(too_large(
                experts_key(s.family),
                experts,
                MAX_TOTAL_EXPERTS,
                " routed experts over all MoE layers",
            ));
        }
        let over = || HfConfigError::WeightsTooLarge {
            bytes: "more than 2^64".into(),
            limit: MAX_MODEL_BYTES,
        };
        let mut total = 0u64;
        for t in s.non_expert_tensors() {
            let bytes = t
                .shape
                .iter()
                .try_fold(t.dtype.bytes(), |a, &d| a.checked_mul(d))
                .ok_or_else(over)?;
            total = total.checked_add(bytes).ok_or_else(over)?;
        }
        let routed = s
            .expert_bytes()
            .checked_mul(experts)
            .and_then(|b| b.checked_add(total))
            .ok_or_else(over)?;
        if routed > MAX_MODEL_BYTES {
            return Err(HfConfigError::WeightsTooLarge {
                bytes: routed.to_string(),
                limit: MAX_MODEL_BYTES,
            });
        }
        Ok(())
    }
}

fn validate(s: &ModelSpec) -> Result<(), HfConfigError> {
    // Bounds first: the checks below and every user of the spec size things from it.
    s.check_limits()?;
    let positive = [
        ("hidden_size", s.hidden_size),
        ("num_attention_heads", s.num_attention_heads),
        ("num_hidden_layers", s.num_layers),
        ("vocab_size", s.vocab_size),
        ("num_experts_per_tok", s.top_k),
        ("moe_intermediate_size", s.moe_intermediate_size),
    ];
    for (field, v) in positive {
        if v == 0 {
            return Err(HfConfigError::Unsupported {
                field: field.into(),
                value: "0".into(),
                why: "must be at least 1",
            });
        }
    }
    if s.num_routed_experts == 0 || s.top_k > s.num_routed_experts {
        return Err(HfConfigError::Unsupported {
            field: "num_experts_per_tok".into(),
            value: s.top_k.to_string(),
            why: "must be at most the number of routed experts, which must be at least 1",
        });
    }
    if s.moe_layers().is_empty() {
        return Err(HfConfigError::Unsupported {
            field: "num_hidden_layers".into(),
            value: s.num_layers.to_string(),
            why: "the config leaves no MoE layer",
        });
    }
    Ok(())
}

/// The largest `config.json` read: real ones are a few KB.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Read `config.json` (or a directory holding one). The spec is named after the directory.
/// Only a regular file of at most [`MAX_CONFIG_BYTES`] is read.
pub fn from_hf_config_file(path: &Path) -> Result<ModelSpec, HfConfigError> {
    let file = if path.is_dir() {
        path.join("config.json")
    } else {
        path.to_path_buf()
    };
    let text = crate::fsio::read_to_string_capped(&file, MAX_CONFIG_BYTES).map_err(|e| {
        HfConfigError::Io {
            path: file.display().to_string(),
            cause: e.into_io(),
        }
    })?;
    let name = file
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    from_hf_config(&text, &name)
}

impl ModelSpec {
    /// The `config.json` a Hugging Face checkpoint of this spec carries (what we write next to
    /// generated checkpoints). [`from_hf_config`] reads it back to an equal spec.
    pub fn to_hf_config(&self) -> Value {
        let dtype = match self.dtype {
            DType::Bf16 | DType::Fp8E4m3 => "bfloat16",
            DType::F16 => "float16",
            DType::F32 => "float32",
        };
        let mut m = serde_json::json!({
            "model_type": self.family.model_type(),
            "torch_dtype": dtype,
            "hidden_size": self.hidden_size,
            "num_attention_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_layers,
            "vocab_size": self.vocab_size,
            "num_experts_per_tok": self.top_k,
            "tie_word_embeddings": self.tie_word_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "hidden_act": "silu",
        });
        let o = m.as_object_mut().expect("json! of an object literal");
        let mut set = |k: &str, v: Value| {
            o.insert(k.to_string(), v);
        };
        match self.attention {
            Attention::Mla {
                q_lora_rank,
                kv_lora_rank,
                qk_nope_head_dim,
                qk_rope_head_dim,
                v_head_dim,
                rope_interleave,
            } => {
                set("num_key_value_heads", self.num_attention_heads.into());
                if self.family == Family::DeepseekV3 {
                    set("rope_interleave", rope_interleave.into());
                }
                set("q_lora_rank", q_lora_rank.map_or(Value::Null, Value::from));
                set("kv_lora_rank", kv_lora_rank.into());
                set("qk_nope_head_dim", qk_nope_head_dim.into());
                set("qk_rope_head_dim", qk_rope_head_dim.into());
                set("v_head_dim", v_head_dim.into());
            }
            Attention::Gqa {
                num_kv_heads,
                head_dim,
                ..
            } => {
                set("num_key_value_heads", num_kv_heads.into());
                set("head_dim", head_dim.into());
            }
        }
        match self.family {
            Family::DeepseekV2 | Family::DeepseekV3 => {
                set("intermediate_size", self.intermediate_size.into());
                set("moe_intermediate_size", self.moe_intermediate_size.into());
                set("n_routed_experts", self.num_routed_experts.into());
                set("n_shared_experts", self.num_shared_experts.into());
                set("first_k_dense_replace", self.first_dense_layers.into());
                set("moe_layer_freq", self.moe_layer_freq.into());
                let r = &self.routing;
                set("routed_scaling_factor", r.scaling_factor.into());
                set("norm_topk_prob", r.normalize.into());
                if self.family == Family::DeepseekV3 {
                    set("scoring_func", "sigmoid".into());
                    set("topk_method", "noaux_tc".into());
                } else {
                    let method = if r.groups.is_some() {
                        "group_limited_greedy"
                    } else {
                        "greedy"
                    };
                    set("topk_method", method.into());
                }
                if let Some((n, k)) = r.groups {
                    set("n_group", n.into());
                    set("topk_group", k.into());
                }
            }
            Family::Qwen2Moe | Family::Qwen3Moe => {
                set("intermediate_size", self.intermediate_size.into());
                set("moe_intermediate_size", self.moe_intermediate_size.into());
                set("num_experts", self.num_routed_experts.into());
                set("decoder_sparse_step", self.decoder_sparse_step.into());
                set("mlp_only_layers", self.mlp_only_layers.clone().into());
                set("norm_topk_prob", self.routing.normalize.into());
                if self.family == Family::Qwen2Moe {
                    set(
                        "shared_expert_intermediate_size",
                        self.shared_expert_intermediate_size.into(),
                    );
                    if let Attention::Gqa { qkv_bias, .. } = self.attention {
                        set("qkv_bias", qkv_bias.into());
                    }
                }
            }
            Family::Mixtral => {
                set("intermediate_size", self.moe_intermediate_size.into());
                set("num_local_experts", self.num_routed_experts.into());
            }
        }
        if let Some(y) = &self.rope_scaling {
            let mut o = serde_json::json!({
                "type": "yarn",
                "factor": y.factor,
                "original_max_position_embeddings": y.original_max_position_embeddings,
                "beta_fast": y.beta_fast,
                "beta_slow": y.beta_slow,
                "truncate": y.truncate,
            });
            for (k, v) in [
                ("mscale", y.mscale),
                ("mscale_all_dim", y.mscale_all_dim),
                ("attention_factor", y.attention_factor),
            ] {
                if let Some(v) = v {
                    o[k] = v.into();
                }
            }
            set("rope_scaling", o);
        }
        if self.dtype == DType::Fp8E4m3 {
            set(
                "quantization_config",
                serde_json::json!({
                    "quant_method": "fp8", "fmt": "e4m3",
                    "activation_scheme": "dynamic", "weight_block_size": [128, 128]
                }),
            );
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What transformers 5 writes for a tiny DeepSeek-V2 without q-LoRA (less neutral keys).
    fn v5_deepseek() -> Value {
        serde_json::json!({
            "model_type": "deepseek_v2", "dtype": "bfloat16",
            "hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 32,
            "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 4,
            "vocab_size": 1024, "num_experts_per_tok": 2, "n_routed_experts": 8,
            "n_shared_experts": 1, "first_k_dense_replace": 1, "q_lora_rank": null,
            "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8,
            "v_head_dim": 16, "head_dim": 8, "qk_head_dim": 24, "mlp_bias": false,
            "rope_parameters": {"rope_theta": 5000.0, "rope_type": "default"}
        })
    }

    fn parse(v: &Value) -> Result<ModelSpec, HfConfigError> {
        from_hf_config(&v.to_string(), "t")
    }

    fn with(key: &str, val: Value) -> Value {
        let mut v = v5_deepseek();
        v[key] = val;
        v
    }

    #[test]
    fn deepseek_routing_is_honoured_or_refused_by_name() {
        let plain = parse(&v5_deepseek()).unwrap().routing;
        assert_eq!(plain, super::super::Routing::default());
        let mut v = with("routed_scaling_factor", 2.5.into());
        v["topk_method"] = "group_limited_greedy".into();
        v["n_group"] = 4.into();
        v["topk_group"] = 2.into();
        let r = parse(&v).unwrap().routing;
        assert_eq!((r.scaling_factor, r.groups), (2.5, Some((4, 2))));
        for (key, val, says) in [
            ("scoring_func", Value::from("sigmoid"), "`scoring_func`"),
            ("topk_method", "noaux_tc".into(), "`topk_method`"),
            (
                "routed_scaling_factor",
                (-1.0).into(),
                "`routed_scaling_factor`",
            ),
        ] {
            let e = parse(&with(key, val)).unwrap_err().to_string();
            assert!(e.contains(says), "{key}: {e}");
        }
        assert!(parse(&with("attention_bias", false.into())).is_ok());
        let e = parse(&with("attention_bias", true.into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`attention_bias`"), "{e}");
        let mut v = with("topk_method", "group_limited_greedy".into());
        let e = parse(&v).unwrap_err().to_string();
        assert!(e.contains("needs n_group and topk_group"), "{e}");
        v["n_group"] = 3.into();
        v["topk_group"] = 1.into();
        let e = parse(&v).unwrap_err().to_string();
        assert!(
            e.contains("`n_group`") && e.contains("3 (topk_group 1"),
            "{e}"
        );
    }

    #[test]
    fn transformers_5_deepseek_keys_are_read() {
        let s = parse(&v5_deepseek()).unwrap();
        assert_eq!(s.rope_theta, 5000.0);
        assert!(matches!(
            s.attention,
            Attention::Mla {
                qk_nope_head_dim: 16,
                qk_rope_head_dim: 8,
                ..
            }
        ));
    }

    #[test]
    fn inconsistent_derived_head_widths_are_refused_by_name() {
        let e = parse(&with("head_dim", 24.into())).unwrap_err().to_string();
        assert!(e.contains("`head_dim`") && e.contains("24"), "{e}");
        let e = parse(&with("qk_head_dim", 16.into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`qk_head_dim`") && e.contains("16"), "{e}");
    }

    #[test]
    fn rope_theta_from_rope_parameters_or_top_level_and_they_must_agree() {
        let mut v = v5_deepseek();
        v.as_object_mut().unwrap().remove("rope_parameters");
        assert_eq!(parse(&v).unwrap().rope_theta, 10000.0);
        v["rope_theta"] = 2000.0.into();
        assert_eq!(parse(&v).unwrap().rope_theta, 2000.0);
        let both = with("rope_theta", 5000.0.into());
        assert_eq!(parse(&both).unwrap().rope_theta, 5000.0);
        let e = parse(&with("rope_theta", 7.0.into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`rope_theta`") && e.contains("5000"), "{e}");
        let bad = with("rope_parameters", serde_json::json!({"rope_theta": "x"}));
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("rope_parameters.rope_theta"), "{e}");
    }

    #[test]
    fn yarn_is_read_from_either_key_and_anything_else_is_refused_by_name() {
        let yarn = serde_json::json!({
            "type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
            "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707
        });
        let mut hub = v5_deepseek();
        hub.as_object_mut().unwrap().remove("rope_parameters");
        hub["rope_scaling"] = yarn.clone();
        let y = parse(&hub).unwrap().rope_scaling.expect("YaRN read");
        assert_eq!((y.factor, y.original_max_position_embeddings), (40.0, 4096));
        assert_eq!((y.mscale, y.mscale_all_dim), (Some(0.707), Some(0.707)));
        // mscale = mscale_all_dim: cos/sin unscaled, the softmax scale times mscale².
        assert_eq!(y.attention_factor(), 1.0);
        let m = 0.1 * 0.707 * 40f64.ln() + 1.0;
        assert!((y.softmax_factor() - m * m).abs() < 1e-12);
        // transformers 5 writes it as rope_parameters with rope_type.
        let mut v5 = yarn.clone();
        v5.as_object_mut().unwrap().remove("type");
        v5["rope_type"] = "yarn".into();
        v5["rope_theta"] = 5000.0.into();
        assert_eq!(
            parse(&with("rope_parameters", v5)).unwrap().rope_scaling,
            Some(y)
        );
        assert_eq!(parse(&v5_deepseek()).unwrap().rope_scaling, None);
        let mut both = hub.clone();
        let mut other = yarn.clone();
        other["factor"] = 4.into();
        both["rope_parameters"] = other;
        let e = parse(&both).unwrap_err().to_string();
        assert!(e.contains("must agree"), "{e}");
        for (k, val, says) in [
            ("type", Value::from("linear"), "rope_scaling.rope_type"),
            ("type", "dynamic".into(), "value dynamic"),
            ("factor", Value::Null, "rope_scaling.factor"),
            ("factor", (-2).into(), "rope_scaling.factor"),
            ("short_factor", 1.into(), "rope_scaling.short_factor"),
            ("original_max_position_embeddings", 0.into(), "original_max"),
        ] {
            let mut v = hub.clone();
            v["rope_scaling"][k] = val;
            let e = parse(&v).unwrap_err().to_string();
            assert!(e.contains(says), "{k}: {e}");
        }
    }

    #[test]
    fn deepseek_v3_routing_is_read_with_the_reference_defaults() {
        let mut v = v5_deepseek();
        v["model_type"] = "deepseek_v3".into();
        v["num_hidden_layers"] = 5.into();
        v.as_object_mut().unwrap().remove("first_k_dense_replace");
        v["n_group"] = 4.into();
        v["topk_group"] = 2.into();
        let s = parse(&v).unwrap();
        let r = s.routing;
        assert_eq!(r.scoring, super::super::Scoring::Sigmoid);
        assert!(r.correction_bias && r.normalize);
        assert_eq!((r.scaling_factor, r.groups), (2.5, Some((4, 2))));
        assert_eq!(r.group_rank, super::super::GroupRank::TopTwoSum);
        // first_k_dense_replace defaults to 3 on V3.
        assert_eq!(s.moe_layers(), vec![3, 4]);
        // Groups of one expert cannot rank by their two best.
        v["n_group"] = 8.into();
        let e = parse(&v).unwrap_err().to_string();
        assert!(e.contains("`n_group`") && e.contains('8'), "{e}");
        v["n_group"] = 4.into();
        v["scoring_func"] = "softmax".into();
        let e = parse(&v).unwrap_err().to_string();
        assert!(e.contains("`scoring_func`"), "{e}");
    }

    #[test]
    fn norm_topk_prob_on_deepseek_v2_is_refused_since_the_reference_ignores_it() {
        assert!(parse(&with("norm_topk_prob", false.into())).is_ok());
        let e = parse(&with("norm_topk_prob", true.into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`norm_topk_prob`"), "{e}");
    }

    #[test]
    fn mlp_bias_true_is_refused() {
        let e = parse(&with("mlp_bias", true.into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`mlp_bias`"), "{e}");
    }

    /// The configs transformers 5 wrote for the reference fixtures.
    fn fixture(name: &str) -> Value {
        let text = match name {
            "qwen2_moe" => include_str!("../../../tests/fixtures/reference/qwen2_moe/config.json"),
            "qwen3_moe" => include_str!("../../../tests/fixtures/reference/qwen3_moe/config.json"),
            _ => include_str!("../../../tests/fixtures/reference/mixtral/config.json"),
        };
        serde_json::from_str(text).unwrap()
    }

    fn refused(v: &Value, field: &str) {
        let e = parse(v).unwrap_err().to_string();
        assert!(e.contains(&format!("`{field}`")), "{e}");
    }

    #[test]
    fn qwen2_moe_reads_its_biases_shared_expert_and_refuses_sliding_windows() {
        let v = fixture("qwen2_moe");
        let s = parse(&v).unwrap();
        assert_eq!(
            s.attention,
            Attention::Gqa {
                num_kv_heads: 2,
                head_dim: 16,
                qkv_bias: true,
                qk_norm: false
            }
        );
        assert_eq!(
            (s.num_shared_experts, s.shared_expert_intermediate_size),
            (1, 32)
        );
        assert!(!s.routing.normalize);
        let mut w = v.clone();
        w["qkv_bias"] = false.into();
        assert!(matches!(
            parse(&w).unwrap().attention,
            Attention::Gqa {
                qkv_bias: false,
                ..
            }
        ));
        w["attention_bias"] = true.into();
        refused(&w, "attention_bias");
        let mut w = v.clone();
        w["norm_topk_prob"] = true.into();
        assert!(parse(&w).unwrap().routing.normalize);
        // Without an explicit all-full `layer_types`, a sliding window would apply.
        let mut w = v.clone();
        w.as_object_mut().unwrap().remove("layer_types");
        w["use_sliding_window"] = true.into();
        refused(&w, "use_sliding_window");
        let mut w = v;
        w["layer_types"][1] = "sliding_attention".into();
        refused(&w, "layer_types");
    }

    #[test]
    fn qwen3_moe_reads_both_expert_count_spellings_and_its_routing() {
        let v = fixture("qwen3_moe");
        let s = parse(&v).unwrap();
        assert_eq!(s.num_routed_experts, 8);
        assert!(s.routing.normalize);
        assert!(matches!(
            s.attention,
            Attention::Gqa {
                qk_norm: true,
                qkv_bias: false,
                ..
            }
        ));
        let mut w = v.clone();
        w["num_experts"] = 8.into();
        assert_eq!(parse(&w).unwrap().num_routed_experts, 8);
        w["num_experts"] = 16.into();
        refused(&w, "num_experts");
        for (key, val) in [
            ("attention_bias", Value::from(true)),
            ("hidden_act", "gelu".into()),
            ("decoder_sparse_step", 0.into()),
        ] {
            let mut w = v.clone();
            w[key] = val;
            refused(&w, key);
        }
        let mut w = v;
        w["use_sliding_window"] = true.into();
        w["sliding_window"] = 64.into();
        refused(&w, "use_sliding_window");
    }

    #[test]
    fn mixtral_always_renormalises_and_refuses_a_sliding_window() {
        let v = fixture("mixtral");
        let s = parse(&v).unwrap();
        assert!(s.routing.normalize);
        assert_eq!((s.num_routed_experts, s.moe_intermediate_size), (8, 32));
        let mut w = v.clone();
        w["norm_topk_prob"] = false.into();
        assert!(
            parse(&w).unwrap().routing.normalize,
            "transformers ignores it"
        );
        let mut w = v.clone();
        w["sliding_window"] = 4096.into();
        refused(&w, "sliding_window");
        // No rope_theta anywhere: Mixtral's own default base.
        let mut w = v;
        w.as_object_mut().unwrap().remove("rope_parameters");
        assert_eq!(parse(&w).unwrap().rope_theta, 1_000_000.0);
    }
}
