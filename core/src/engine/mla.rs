//! DeepSeek's multi-head latent attention (MLA), absorbed: each rank caches the compressed KV
//! `[norm(c_kv), rope(k_rope)]` of every token (shared by its heads) and attends with queries
//! folded through `W_UK`, reading values back through `W_UV`.

use super::{AttnDims, AttnMats, Engine, EngineError, KvLayout, QProj, Scratch, StepInput, math};
use crate::deploy::DeviceRegions;
use crate::hmm::Hmm;

/// The epsilon of MLA's latent norms (`kv_a_layernorm`, `q_a_layernorm`): transformers builds
/// them with its RMSNorm default, not the config's `rms_norm_eps`.
const LATENT_EPS: f32 = 1e-6;

impl Engine {
    /// MLA attention of layer `l`: every rank appends the new tokens' compressed KV to its
    /// device's cache and attends over the whole context; outputs summed in rank order.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn mla_attention(
        &self,
        hmm: &Hmm,
        devs: &[&DeviceRegions],
        l: usize,
        xn: &[f32],
        batch: &[StepInput<'_>],
        kv: &KvLayout,
        sc: &mut Scratch,
    ) -> Result<Vec<f32>, EngineError> {
        let d = self.layout.dims;
        let AttnDims::Mla {
            nope,
            rope,
            v: vd,
            kv_lora,
            scale,
            ..
        } = d.attn
        else {
            unreachable!("MLA attention on a layout without MLA dims")
        };
        let (b, h) = (batch.len(), d.hidden);
        let (hr, qh, kvw) = (d.heads_per_rank, nope + rope, d.kv_width());
        let mut attn = vec![0.0f32; b * h];
        let mut q = vec![0.0f32; b * hr * qh];
        let mut c = vec![0.0f32; b * kvw];
        let mut a = vec![0.0f32; b * hr * vd];
        let mut norm = Vec::new();
        let mut ctx_vals = Vec::new();
        for (r, dev) in devs.iter().enumerate() {
            let AttnMats::Mla {
                q: qp,
                kv_a,
                kv_a_norm,
                kv_b,
                o: o_proj,
            } = self.layout.ranks[r].layers[l].attn
            else {
                unreachable!("MLA attention on a layer without MLA tensors")
            };
            match qp {
                QProj::Direct(q_proj) => {
                    Self::mat(hmm, dev, &q_proj, &mut sc.w)?;
                    math::matmul_t(xn, b, h, &sc.w, hr * qh, &mut q);
                }
                QProj::Lora {
                    a: qa,
                    norm: qn,
                    b: qb,
                } => {
                    // q = q_b(rms_norm(q_a(x))), the latent normed row by row.
                    let rank = qa.rows;
                    let mut lat = vec![0.0f32; b * rank];
                    Self::mat(hmm, dev, &qa, &mut sc.w)?;
                    math::matmul_t(xn, b, h, &sc.w, rank, &mut lat);
                    Self::mat(hmm, dev, &qn, &mut sc.w2)?;
                    for row in lat.chunks_exact_mut(rank) {
                        math::rms_norm(row, &sc.w2, LATENT_EPS, &mut norm);
                        row.copy_from_slice(&norm);
                    }
                    Self::mat(hmm, dev, &qb, &mut sc.w)?;
                    math::matmul_t(&lat, b, rank, &sc.w, hr * qh, &mut q);
                }
            }
            Self::mat(hmm, dev, &kv_a, &mut sc.w)?;
            math::matmul_t(xn, b, h, &sc.w, kvw, &mut c);
            Self::mat(hmm, dev, &kv_a_norm, &mut sc.w2)?;
            // Append each token's [norm(c_kv), rope(k_rope)] to its block.
            for (i, s) in batch.iter().enumerate() {
                let row = &mut c[i * kvw..(i + 1) * kvw];
                math::rms_norm(&row[..kv_lora], &sc.w2, LATENT_EPS, &mut norm);
                row[..kv_lora].copy_from_slice(&norm);
                self.layout.rope.apply(&mut row[kv_lora..], s.pos);
                math::narrow(row, &mut sc.bytes);
                let block = s.blocks[(s.pos / kv.block_tokens) as usize];
                let at = kv.offset(block, l as u32, s.pos % kv.block_tokens);
                hmm.write_view(dev.kv, at, &sc.bytes)?;
            }
            Self::mat(hmm, dev, &kv_b, &mut sc.w)?; // [hr·(nope+v), kv_lora]
            Self::mat(hmm, dev, &o_proj, &mut sc.w3)?; // [h, hr·v]
            for (i, s) in batch.iter().enumerate() {
                // The context, read back from the cache (bf16 as stored).
                let ctx = (s.pos + 1) as usize;
                sc.bytes.resize(ctx * kvw * 2, 0);
                let mut done = 0usize;
                for &block in s.blocks {
                    if done >= ctx {
                        break;
                    }
                    let n = (ctx - done).min(kv.block_tokens as usize);
                    let at = kv.offset(block, l as u32, 0);
                    hmm.read_view(
                        dev.kv,
                        at,
                        &mut sc.bytes[done * kvw * 2..(done + n) * kvw * 2],
                    )?;
                    done += n;
                }
                math::widen(&sc.bytes, &mut ctx_vals); // [ctx, kvw]
                for hh in 0..hr {
                    let qrow = &q[(i * hr + hh) * qh..(i * hr + hh + 1) * qh];
                    let w_uk = &sc.w[hh * (nope + vd) * kv_lora..][..nope * kv_lora];
                    let w_uv = &sc.w[(hh * (nope + vd) + nope) * kv_lora..][..vd * kv_lora];
                    // Absorbed query [W_UKᵀ q_nope, rope(q_rope)] against [c_kv, k_rope].
                    let mut qa = vec![0.0f32; kvw];
                    math::matmul(&qrow[..nope], 1, nope, w_uk, kv_lora, &mut qa[..kv_lora]);
                    qa[kv_lora..].copy_from_slice(&qrow[nope..]);
                    self.layout.rope.apply(&mut qa[kv_lora..], s.pos);
                    let mut scores = vec![0.0f32; ctx];
                    math::matmul_t(&qa, 1, kvw, &ctx_vals, ctx, &mut scores);
                    for v in &mut scores {
                        *v *= scale;
                    }
                    math::softmax(&mut scores);
                    let mut mixed = vec![0.0f32; kvw];
                    math::matmul(&scores, 1, ctx, &ctx_vals, kvw, &mut mixed);
                    let out = &mut a[(i * hr + hh) * vd..(i * hr + hh + 1) * vd];
                    math::matmul_t(&mixed[..kv_lora], 1, kv_lora, w_uv, vd, out);
                }
            }
            let mut o = vec![0.0f32; b * h];
            math::matmul_t(&a, b, hr * vd, &sc.w3, h, &mut o);
            for (x, y) in attn.iter_mut().zip(&o) {
                *x += y;
            }
        }
        Ok(attn)
    }
}
