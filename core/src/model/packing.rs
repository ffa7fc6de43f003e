//! How tensors are packed into device allocations. One allocation holds one *pack*: the
//! non-expert globals (embeddings, final norm, LM head), the non-expert tensors of one layer
//! (attention, norms, router, dense or shared MLP), or one routed expert of one layer. Inside a
//! pack each tensor (or its TP shard) starts at a 64-byte boundary, the alignment device-to-device
//! copies need, so compute can read it in place.

use serde::Serialize;

use super::{ModelSpec, TensorSpec};

/// Alignment of each tensor inside a pack.
pub const TENSOR_ALIGN: u64 = 64;

/// Which pack a tensor belongs to.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[serde(tag = "pack", rename_all = "snake_case")]
pub enum PackKey {
    /// Embeddings, the final norm and the LM head.
    Globals,
    /// Non-expert tensors of one layer.
    Layer { layer: u32 },
    /// One routed expert of one MoE layer (never TP-split).
    Expert { layer: u32, expert: u32 },
}

/// One tensor (or TP shard) inside a pack.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct PackedTensor {
    pub spec: TensorSpec,
    /// The shard's shape (the full shape when replicated).
    pub shape: Vec<u64>,
    /// Byte offset inside the pack.
    pub offset: u64,
    /// Bytes of the shard.
    pub len: u64,
}

/// A set of tensors that lives in one allocation.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct Pack {
    pub key: PackKey,
    /// TP degree and rank the shards were cut for (1, 0 for experts).
    pub tp: u32,
    pub rank: u32,
    pub tensors: Vec<PackedTensor>,
    /// Bytes the pack occupies (the end of its last tensor).
    pub bytes: u64,
}

impl Pack {
    fn build(
        key: PackKey,
        tp: u32,
        rank: u32,
        specs: impl IntoIterator<Item = TensorSpec>,
    ) -> Self {
        let mut offset = 0u64;
        let tensors = specs
            .into_iter()
            .map(|spec| {
                let start = offset.next_multiple_of(TENSOR_ALIGN);
                let len = spec.shard_bytes(tp, rank);
                offset = start + len;
                PackedTensor {
                    shape: spec.shard_shape(tp, rank),
                    spec,
                    offset: start,
                    len,
                }
            })
            .collect();
        Self {
            key,
            tp,
            rank,
            tensors,
            bytes: offset,
        }
    }

    /// The packed tensor with this Hugging Face name.
    pub fn tensor(&self, name: &str) -> Option<&PackedTensor> {
        self.tensors.iter().find(|t| t.spec.name == name)
    }
}

impl ModelSpec {
    /// The non-expert packs held by TP rank `rank` of a TP group of `tp`: the globals, then one
    /// per layer.
    pub fn non_expert_packs(&self, tp: u32, rank: u32) -> Vec<Pack> {
        let mut globals = Vec::new();
        let mut layers: Vec<Vec<TensorSpec>> = vec![Vec::new(); self.num_layers as usize];
        for t in self.non_expert_tensors() {
            match t.layer.and_then(|l| layers.get_mut(l as usize)) {
                Some(v) => v.push(t),
                None => globals.push(t),
            }
        }
        std::iter::once(Pack::build(PackKey::Globals, tp, rank, globals))
            .chain(
                layers
                    .into_iter()
                    .enumerate()
                    .map(|(l, ts)| Pack::build(PackKey::Layer { layer: l as u32 }, tp, rank, ts)),
            )
            .collect()
    }

    /// The pack of routed expert `expert` of MoE layer `layer`.
    pub fn expert_pack(&self, layer: u32, expert: u32) -> Pack {
        Pack::build(
            PackKey::Expert { layer, expert },
            1,
            0,
            self.expert_tensors(layer, expert),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::preset;

    #[test]
    fn packs_cover_every_tensor_once_aligned() {
        let spec = preset("micro-moe").unwrap().spec();
        let packs = spec.non_expert_packs(2, 1);
        assert_eq!(packs.len(), 1 + spec.num_layers as usize);
        assert_eq!(packs[0].key, PackKey::Globals);
        let n: usize = packs.iter().map(|p| p.tensors.len()).sum();
        let non_expert = spec
            .tensors()
            .iter()
            .filter(|t| !t.group.is_expert())
            .count();
        assert_eq!(n, non_expert);
        for name in ["micro-moe", "deepseek-v3", "qwen3-30b-a3b"] {
            let m = preset(name).unwrap().spec();
            let filtered: Vec<_> = m
                .tensors()
                .into_iter()
                .filter(|t| !t.group.is_expert())
                .collect();
            assert_eq!(m.non_expert_tensors(), filtered, "{name}");
        }
        for p in &packs {
            for w in p.tensors.windows(2) {
                assert!(w[0].offset + w[0].len <= w[1].offset);
            }
            assert!(p.tensors.iter().all(|t| t.offset % TENSOR_ALIGN == 0));
        }
        let e = spec.expert_pack(1, 3);
        assert_eq!(e.tensors.len(), 3);
        assert_eq!(
            e.bytes,
            spec.expert_bytes(),
            "expert tensors are 64-byte multiples"
        );
        assert!(
            e.tensor("model.layers.1.mlp.experts.3.down_proj.weight")
                .is_some()
        );
    }
}
