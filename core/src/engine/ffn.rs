//! The feed-forward half of a layer: a TP-sharded SwiGLU MLP (dense layers, shared experts) or
//! the router and the routed experts read from whichever device maps them.

use super::{Engine, EngineError, ExpertIndex, Ffn, Mat, Scratch, math};
use crate::deploy::DeviceRegions;
use crate::hmm::Hmm;

impl Engine {
    /// A TP-sharded SwiGLU MLP (the dense one, or the shared experts), summed in rank order.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn tp_mlp(
        &self,
        hmm: &Hmm,
        devs: &[&DeviceRegions],
        l: usize,
        shared: bool,
        xn: &[f32],
        b: usize,
        sc: &mut Scratch,
    ) -> Result<Vec<f32>, EngineError> {
        let h = self.layout.dims.hidden;
        let mut y = vec![0.0f32; b * h];
        for (r, dev) in devs.iter().enumerate() {
            let mlp = match self.layout.ranks[r].layers[l].ffn {
                Ffn::Dense(m) if !shared => m,
                Ffn::Moe {
                    shared: Some(m), ..
                } if shared => m,
                _ => continue,
            };
            let w = mlp.gate.rows;
            let mut g = vec![0.0f32; b * w];
            let mut u = vec![0.0f32; b * w];
            Self::mat(hmm, dev, &mlp.gate, &mut sc.w)?;
            math::matmul_t(xn, b, h, &sc.w, w, &mut g);
            Self::mat(hmm, dev, &mlp.up, &mut sc.w)?;
            math::matmul_t(xn, b, h, &sc.w, w, &mut u);
            math::swiglu(&mut g, &u);
            Self::mat(hmm, dev, &mlp.down, &mut sc.w)?;
            let mut o = vec![0.0f32; b * h];
            math::matmul_t(&g, b, w, &sc.w, h, &mut o);
            for (a, v) in y.iter_mut().zip(&o) {
                *a += v;
            }
        }
        // Qwen2-MoE: the shared expert's output times sigmoid(gate · x), per token (the gate
        // is replicated; the sum over ranks is linear, so it applies once after it).
        if let Ffn::Moe {
            shared_gate: Some(g),
            ..
        } = self.layout.ranks[0].layers[l].ffn
            && shared
        {
            Self::mat(hmm, devs[0], &g, &mut sc.w)?;
            let mut z = vec![0.0f32; b];
            math::matmul_t(xn, b, h, &sc.w, 1, &mut z);
            for (row, z) in y.chunks_exact_mut(h).zip(&z) {
                let s = 1.0 / (1.0 + (-z).exp());
                for v in row {
                    *v *= s;
                }
            }
        }
        Ok(y)
    }

    /// Router, top-k and the routed experts of MoE layer `l`, combined per token in expert-id
    /// order. Returns the output and each expert's token count.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn moe(
        &self,
        hmm: &Hmm,
        dev0: &DeviceRegions,
        experts: &ExpertIndex,
        l: u32,
        router: &Mat,
        bias: Option<&Mat>,
        xn: &[f32],
        b: usize,
        sc: &mut Scratch,
    ) -> Result<(Vec<f32>, Vec<u32>), EngineError> {
        let d = self.layout.dims;
        let (h, e) = (d.hidden, d.experts);
        Self::mat(hmm, dev0, router, &mut sc.w)?;
        let mut logits = vec![0.0f32; b * e];
        math::matmul_t(xn, b, h, &sc.w, e, &mut logits);
        let mut corr = Vec::new();
        if let Some(m) = bias {
            Self::mat(hmm, dev0, m, &mut corr)?;
        }
        let corr = bias.map(|_| corr.as_slice());
        // Per expert, the tokens routed to it and their weights.
        let mut routed: Vec<Vec<(usize, f32)>> = vec![Vec::new(); e];
        for (i, row) in logits.chunks_exact_mut(e).enumerate() {
            for (x, w) in d.route.route(row, corr) {
                routed[x].push((i, w));
            }
        }
        let ex = self.layout.expert;
        let mi = ex.gate.rows;
        let mut y = vec![0.0f32; b * h];
        let mut counts = vec![0u32; e];
        for (x, toks) in routed.iter().enumerate() {
            if toks.is_empty() {
                continue;
            }
            counts[x] = toks.len() as u32;
            let &(res, slot) = experts
                .get(&(l, x as u32))
                .ok_or(EngineError::ExpertMissing {
                    layer: l,
                    expert: x as u32,
                })?;
            let n = toks.len();
            let mut xe = Vec::with_capacity(n * h);
            for (i, _) in toks {
                xe.extend_from_slice(&xn[i * h..(i + 1) * h]);
            }
            let read = |m: &Mat, out: &mut Vec<f32>| -> Result<(), EngineError> {
                let bytes = hmm.view_range(res, slot + m.offset, m.bytes() as usize)?;
                m.widen(bytes, out);
                Ok(())
            };
            let mut g = vec![0.0f32; n * mi];
            let mut u = vec![0.0f32; n * mi];
            read(&ex.gate, &mut sc.w)?;
            math::matmul_t(&xe, n, h, &sc.w, mi, &mut g);
            read(&ex.up, &mut sc.w)?;
            math::matmul_t(&xe, n, h, &sc.w, mi, &mut u);
            math::swiglu(&mut g, &u);
            read(&ex.down, &mut sc.w)?;
            let mut o = vec![0.0f32; n * h];
            math::matmul_t(&g, n, mi, &sc.w, h, &mut o);
            for (k, (i, w)) in toks.iter().enumerate() {
                for (a, v) in y[i * h..(i + 1) * h].iter_mut().zip(&o[k * h..(k + 1) * h]) {
                    *a += w * v;
                }
            }
        }
        Ok((y, counts))
    }
}
