//! Grouped-query attention (Qwen2-MoE, Qwen3-MoE, Mixtral): each rank caches the keys and values
//! of its KV heads per token and attends with its query heads, each KV head shared by a group.

use super::{Engine, EngineError, KvLayout, Scratch, StepInput};
use crate::deploy::DeviceRegions;
use crate::hmm::Hmm;

impl Engine {
    /// GQA attention of layer `l`, summed over the ranks in rank order.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gqa_attention(
        &self,
        _hmm: &Hmm,
        _devs: &[&DeviceRegions],
        l: usize,
        _xn: &[f32],
        _batch: &[StepInput<'_>],
        _kv: &KvLayout,
        _sc: &mut Scratch,
    ) -> Result<Vec<f32>, EngineError> {
        Err(EngineError::Unsupported {
            reason: format!("layer {l}: GQA attention is not served yet"),
        })
    }
}
