//! The MoE compute: real decode steps on the CPU over an instance's HMM views.
//!
//! Per layer, for a batch of requests on one TP group (a DP replica): RMSNorm; MLA attention
//! with each TP rank's shard of the projections — the compressed KV of the new token appended to
//! the request's KV blocks on that rank's device and the whole context read back from them; the
//! ranks' outputs summed in rank order; then a dense SwiGLU MLP, or the router over the gate
//! weights, top-k, the routed experts' SwiGLU read from whichever device's mapped expert slot
//! holds them, combined per token in expert-id order, plus the TP-sharded shared experts. Greedy
//! decoding over the TP-sharded LM head.
//!
//! Every weight is read in place through the instance's view (bf16, f16 or f32 as stored,
//! widened to f32 per use); the order
//! of every sum is fixed and no kernel depends on the batch, so a request's tokens depend only
//! on the model's bytes and its own prompt — not on the config, the replica, the batch or where
//! an expert lives. That is what lets the tests compare answers bit for bit across scaling.

mod ffn;
mod gqa;
mod layout;
pub mod math;
mod mla;
pub mod rope;
pub mod routing;

use std::collections::BTreeMap;

pub use layout::{
    AttnDims, AttnMats, Dims, Ffn, KvLayout, LayerMats, Layout, Mat, Mlp, QProj, RankMats,
};

use crate::deploy::{Deployment, DeviceRegions};
use crate::hmm::{Hmm, HmmError, ReservationId};
use crate::model::ModelSpec;

/// Tokens per KV block.
pub const BLOCK_TOKENS: u32 = 16;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the engine cannot run this model: {reason}")]
    Unsupported { reason: String },
    #[error("replica {group} does not exist: the instance has {groups} (DP)")]
    NoGroup { group: usize, groups: usize },
    #[error("token {token} is outside the vocabulary of {vocab}")]
    BadToken { token: u32, vocab: u32 },
    #[error("position {pos} needs KV block {need}, the request holds {have} blocks")]
    NoBlock { pos: u32, need: usize, have: usize },
    #[error("KV block {block} does not exist: the device's KV cache has {blocks} blocks")]
    BadBlock { block: u32, blocks: u32 },
    #[error("expert {expert} of layer {layer} is not mapped by the instance")]
    ExpertMissing { layer: u32, expert: u32 },
    #[error(transparent)]
    Hmm(#[from] HmmError),
}

/// One request's part of a step: feed `token` at position `pos`; its KV lives in `blocks`
/// (block `i` holds positions `i·16 .. i·16+15`) on every device of the replica.
#[derive(Clone, Copy, Debug)]
pub struct StepInput<'a> {
    pub token: u32,
    pub pos: u32,
    pub blocks: &'a [u32],
    /// Return the log-probabilities of the next token: `Some(n)` the chosen one's and the `n`
    /// most likely (`n` ≤ [`MAX_TOP_LOGPROBS`]).
    pub logprobs: Option<u8>,
}

/// Most alternatives a step returns per token (OpenAI's `top_logprobs` limit).
pub const MAX_TOP_LOGPROBS: u8 = 20;

/// Log-probabilities (natural log, the log-softmax of the logits over the whole vocabulary) of
/// a generated token and of the most likely tokens at its position.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TokenLogprobs {
    pub logprob: f32,
    /// `(token, logprob)`, most likely first, ties to the lower id.
    pub top: Vec<(u32, f32)>,
}

/// The log-probabilities of `chosen` and of the `top` most likely tokens in `logits` (one row
/// over the whole vocabulary), summed in vocabulary order so the figure does not depend on how
/// the vocabulary was sharded.
pub fn logprobs_of(logits: &[f32], chosen: u32, top: u8) -> TokenLogprobs {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|v| f64::from(*v - max).exp()).sum();
    let lse = max + sum.ln() as f32;
    let n = usize::from(top.min(MAX_TOP_LOGPROBS));
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
    if n > 0 {
        for (i, v) in logits.iter().enumerate() {
            if best.len() == n && best.last().is_some_and(|b| *v <= b.1) {
                continue;
            }
            let at = best.partition_point(|b| b.1 >= *v);
            best.insert(at, (i as u32, *v));
            best.truncate(n);
        }
    }
    TokenLogprobs {
        logprob: logits
            .get(chosen as usize)
            .map_or(f32::NEG_INFINITY, |v| v - lse),
        top: best.into_iter().map(|(t, v)| (t, v - lse)).collect(),
    }
}

/// What a step produced.
#[derive(Clone, Debug, Default)]
pub struct StepOutput {
    /// The greedy next token of each input, in order.
    pub next: Vec<u32>,
    /// Per MoE layer, how many tokens each expert received.
    pub expert_tokens: BTreeMap<u32, Vec<u32>>,
    /// Per input, its log-probabilities where it asked for them.
    pub logprobs: Vec<Option<TokenLogprobs>>,
}

/// Free KV blocks of one replica's KV caches (the same block ids on every TP rank's device).
#[derive(Clone, Debug)]
pub struct BlockPool {
    free: Vec<u32>,
    total: u32,
}

impl BlockPool {
    pub fn new(blocks: u32) -> Self {
        Self {
            free: (0..blocks).rev().collect(),
            total: blocks,
        }
    }

    /// `n` blocks, or `None` (and nothing taken) when fewer are free.
    pub fn take(&mut self, n: usize) -> Option<Vec<u32>> {
        if n > self.free.len() {
            return None;
        }
        let at = self.free.len() - n;
        Some(self.free.split_off(at).into_iter().rev().collect())
    }

    pub fn give(&mut self, blocks: impl IntoIterator<Item = u32>) {
        self.free.extend(blocks);
    }

    pub fn free(&self) -> usize {
        self.free.len()
    }

    pub fn total(&self) -> u32 {
        self.total
    }
}

/// Blocks a request of `tokens` positions needs.
pub fn blocks_for(tokens: u32) -> usize {
    tokens.div_ceil(BLOCK_TOKENS) as usize
}

/// The engine for one model under one TP degree (instances of any DP share it).
#[derive(Clone, Debug)]
pub struct Engine {
    layout: Layout,
    vocab: u32,
}

/// Scratch buffers reused across the matrices of a step.
#[derive(Default)]
struct Scratch {
    w: Vec<f32>,
    w2: Vec<f32>,
    w3: Vec<f32>,
    bytes: Vec<u8>,
}

/// Where each expert of each layer can be read: `(reservation, slot offset)`.
type ExpertIndex = BTreeMap<(u32, u32), (ReservationId, u64)>;

impl Engine {
    pub fn new(model: &ModelSpec, tp: u32) -> Result<Self, EngineError> {
        Ok(Self {
            layout: Layout::new(model, tp)?,
            vocab: model.vocab_size,
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The KV layout of `inst`'s KV allocations (they all have the same size).
    pub fn kv_layout(&self, hmm: &Hmm, inst: &Deployment) -> KvLayout {
        let len = inst
            .devices
            .first()
            .and_then(|r| hmm.allocation(r.kv_alloc))
            .map_or(0, |a| a.len);
        self.layout.kv_layout(len, BLOCK_TOKENS)
    }

    fn read<'h>(
        hmm: &'h Hmm,
        res: ReservationId,
        m: &Mat,
        row0: usize,
        rows: usize,
    ) -> Result<&'h [u8], EngineError> {
        let r = hmm
            .reservation(res)
            .ok_or(HmmError::UnknownReservation(res))?;
        let slot = r.slots.get(m.slot).map_or(0, |s| s.offset);
        let at = slot + m.offset + (row0 * m.row_bytes()) as u64;
        Ok(hmm.view_range(res, at, rows * m.row_bytes())?)
    }

    /// Widen all of `m` from `dev`'s non-expert view into `out`.
    fn mat(hmm: &Hmm, dev: &DeviceRegions, m: &Mat, out: &mut Vec<f32>) -> Result<(), EngineError> {
        let b = Self::read(hmm, dev.non_expert, m, 0, m.rows)?;
        m.widen(b, out);
        Ok(())
    }

    fn expert_index(inst: &Deployment, hmm: &Hmm, group: &[&DeviceRegions]) -> ExpertIndex {
        let mut ix = ExpertIndex::new();
        // Holders outside the replica first, then inside, so the replica's own copy wins (the
        // bytes are identical; locality is the only difference).
        let inside = |d: &DeviceRegions| group.iter().any(|g| g.device == d.device);
        let order = inst
            .devices
            .iter()
            .filter(|d| !inside(d))
            .chain(inst.devices.iter().filter(|d| inside(d)));
        for d in order {
            for (&l, s) in &d.experts {
                let Some(r) = hmm.reservation(s.reservation) else {
                    continue;
                };
                for (i, x) in s.slots.iter().enumerate() {
                    if let (Some((x, _)), Some(slot)) = (x, r.slots.get(i)) {
                        ix.insert((l, *x), (s.reservation, slot.offset));
                    }
                }
            }
        }
        ix
    }

    /// One decode step for `batch` on replica `group` of `inst`: appends each input's KV and
    /// returns its greedy next token.
    pub fn step(
        &self,
        hmm: &Hmm,
        inst: &Deployment,
        group: usize,
        batch: &[StepInput<'_>],
    ) -> Result<StepOutput, EngineError> {
        self.step_locked(|| hmm, inst, group, batch)
    }

    /// [`step`](Self::step) taking the HMM from `lock` once per layer (and once for the
    /// embedding and once for the head), so a caller that shares the HMM behind a lock holds it
    /// for a layer at a time and a scaling operation waiting to prepare or commit waits for at
    /// most one layer. The instance's own view does not change between layers: a transition
    /// builds a new view beside it.
    pub fn step_locked<G: std::ops::Deref<Target = Hmm>>(
        &self,
        lock: impl Fn() -> G,
        inst: &Deployment,
        group: usize,
        batch: &[StepInput<'_>],
    ) -> Result<StepOutput, EngineError> {
        let lay = &self.layout;
        let tp = lay.tp as usize;
        let groups = inst.devices.len() / tp.max(1);
        if group >= groups {
            return Err(EngineError::NoGroup { group, groups });
        }
        let devs: Vec<&DeviceRegions> = inst.devices[group * tp..(group + 1) * tp].iter().collect();
        let guard = lock();
        let hmm: &Hmm = &guard;
        let kv = self.kv_layout(hmm, inst);
        for s in batch {
            if s.token >= self.vocab {
                return Err(EngineError::BadToken {
                    token: s.token,
                    vocab: self.vocab,
                });
            }
            let need = (s.pos / kv.block_tokens) as usize;
            if need >= s.blocks.len() {
                return Err(EngineError::NoBlock {
                    pos: s.pos,
                    need,
                    have: s.blocks.len(),
                });
            }
            if let Some(&bad) = s.blocks.iter().find(|b| **b >= kv.blocks) {
                return Err(EngineError::BadBlock {
                    block: bad,
                    blocks: kv.blocks,
                });
            }
        }
        let d = lay.dims;
        let (b, h) = (batch.len(), d.hidden);
        let mut out = StepOutput::default();
        if b == 0 {
            return Ok(out);
        }
        let experts = Self::expert_index(inst, hmm, &devs);
        let mut sc = Scratch::default();

        // Embedding: each token's row from the rank holding its vocabulary shard.
        let mut x = vec![0.0f32; b * h];
        for (i, s) in batch.iter().enumerate() {
            let r = lay
                .ranks
                .iter()
                .rposition(|rm| rm.vocab_start <= s.token)
                .unwrap_or(0);
            let rm = &lay.ranks[r];
            let row = (s.token - rm.vocab_start) as usize;
            let bytes = Self::read(hmm, devs[r].non_expert, &rm.embed, row, 1)?;
            rm.embed.widen(bytes, &mut sc.w);
            x[i * h..(i + 1) * h].copy_from_slice(&sc.w);
        }

        drop(guard);
        let mut xn = Vec::new();
        for l in 0..lay.moe_layers.len() {
            let guard = lock();
            let hmm: &Hmm = &guard;
            let l0 = &lay.ranks[0].layers[l];
            Self::mat(hmm, devs[0], &l0.input_norm, &mut sc.w)?;
            math::rms_norm(&x, &sc.w, d.eps, &mut xn);
            let attn = match d.attn {
                AttnDims::Mla { .. } => {
                    self.mla_attention(hmm, &devs, l, &xn, batch, &kv, &mut sc)?
                }
                AttnDims::Gqa { .. } => {
                    self.gqa_attention(hmm, &devs, l, &xn, batch, &kv, &mut sc)?
                }
            };
            for (a, o) in x.iter_mut().zip(&attn) {
                *a += o;
            }
            Self::mat(hmm, devs[0], &l0.post_norm, &mut sc.w)?;
            math::rms_norm(&x, &sc.w, d.eps, &mut xn);
            match l0.ffn {
                Ffn::Dense(_) => {
                    let y = self.tp_mlp(hmm, &devs, l, false, &xn, b, &mut sc)?;
                    for (a, o) in x.iter_mut().zip(&y) {
                        *a += o;
                    }
                }
                Ffn::Moe {
                    router,
                    correction_bias,
                    shared,
                    ..
                } => {
                    let (y, counts) = self.moe(
                        hmm,
                        devs[0],
                        &experts,
                        l as u32,
                        &router,
                        correction_bias.as_ref(),
                        &xn,
                        b,
                        &mut sc,
                    )?;
                    for (a, o) in x.iter_mut().zip(&y) {
                        *a += o;
                    }
                    if shared.is_some() {
                        let y = self.tp_mlp(hmm, &devs, l, true, &xn, b, &mut sc)?;
                        for (a, o) in x.iter_mut().zip(&y) {
                            *a += o;
                        }
                    }
                    out.expert_tokens.insert(l as u32, counts);
                }
            }
        }

        // Final norm and the LM head, each rank its vocabulary shard; argmax, ties to the lower id.
        let guard = lock();
        let hmm: &Hmm = &guard;
        Self::mat(hmm, devs[0], &lay.ranks[0].final_norm, &mut sc.w)?;
        math::rms_norm(&x, &sc.w, d.eps, &mut xn);
        let mut best = vec![(f32::NEG_INFINITY, 0u32); b];
        // Whole rows only for the inputs that want log-probabilities.
        let mut full: Vec<Option<Vec<f32>>> = batch
            .iter()
            .map(|s| s.logprobs.map(|_| Vec::with_capacity(self.vocab as usize)))
            .collect();
        for (r, rm) in lay.ranks.iter().enumerate() {
            Self::mat(hmm, devs[r], &rm.lm_head, &mut sc.w)?;
            let n = rm.lm_head.rows;
            let mut logits = vec![0.0; b * n];
            math::matmul_t(&xn, b, h, &sc.w, n, &mut logits);
            for (i, row) in logits.chunks_exact(n).enumerate() {
                for (j, v) in row.iter().enumerate() {
                    if *v > best[i].0 {
                        best[i] = (*v, rm.vocab_start + j as u32);
                    }
                }
                if let Some(f) = &mut full[i] {
                    f.extend_from_slice(row);
                }
            }
        }
        out.next = best.into_iter().map(|(_, t)| t).collect();
        out.logprobs = full
            .into_iter()
            .zip(batch)
            .zip(&out.next)
            .map(|((f, s), next)| f.map(|row| logprobs_of(&row, *next, s.logprobs.unwrap_or(0))))
            .collect();
        Ok(out)
    }
}
