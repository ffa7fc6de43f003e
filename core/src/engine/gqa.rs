//! Grouped-query attention (Qwen2-MoE, Qwen3-MoE, Mixtral): each rank caches the keys and values
//! of its KV heads per token and attends with its query heads, each KV head shared by a group.
//!
//! As transformers computes it: q, k, v projections (Qwen2-MoE adds biases), Qwen3-MoE's
//! per-head RMSNorm of q and k, then RoPE in the `rotate_half` layout, causal softmax attention
//! scaled by `1/sqrt(head_dim)`, and the output projection, summed over the ranks in rank order.

use super::{AttnDims, AttnMats, Engine, EngineError, KvLayout, Scratch, StepInput, math};
use crate::deploy::DeviceRegions;
use crate::hmm::Hmm;

impl Engine {
    /// GQA attention of layer `l`: every rank appends the new tokens' keys and values (its KV
    /// heads, bf16) to its device's cache and attends over the whole context with its query
    /// heads; outputs summed in rank order.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gqa_attention(
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
        let AttnDims::Gqa {
            head_dim: hd,
            kv_heads_per_rank: kvr,
            group,
        } = d.attn
        else {
            unreachable!("GQA attention on a layout without GQA dims")
        };
        let (b, h, hr) = (batch.len(), d.hidden, d.heads_per_rank);
        let kvw = d.kv_width();
        let scale = 1.0 / (hd as f32).sqrt();
        let mut attn = vec![0.0f32; b * h];
        let mut q = vec![0.0f32; b * hr * hd];
        let mut k = vec![0.0f32; b * kvr * hd];
        let mut v = vec![0.0f32; b * kvr * hd];
        let mut a = vec![0.0f32; b * hr * hd];
        let mut norm = Vec::new();
        let mut ctx_vals = Vec::new();
        let mut keys = Vec::new();
        let mut vals = Vec::new();
        let mut row = vec![0.0f32; kvw];
        for (r, dev) in devs.iter().enumerate() {
            let AttnMats::Gqa {
                q: q_proj,
                k: k_proj,
                v: v_proj,
                o: o_proj,
                bias,
                qk_norm,
            } = self.layout.ranks[r].layers[l].attn
            else {
                unreachable!("GQA attention on a layer without GQA tensors")
            };
            for (m, out, n) in [
                (&q_proj, &mut q, hr * hd),
                (&k_proj, &mut k, kvr * hd),
                (&v_proj, &mut v, kvr * hd),
            ] {
                Self::mat(hmm, dev, m, &mut sc.w)?;
                math::matmul_t(xn, b, h, &sc.w, n, out);
            }
            if let Some(bs) = bias {
                for (m, out) in bs.iter().zip([&mut q, &mut k, &mut v]) {
                    Self::mat(hmm, dev, m, &mut sc.w)?;
                    for row in out.chunks_exact_mut(sc.w.len()) {
                        for (x, bb) in row.iter_mut().zip(&sc.w) {
                            *x += bb;
                        }
                    }
                }
            }
            if let Some([qn, kn]) = qk_norm {
                // Per head, before RoPE (transformers' Qwen3-MoE order).
                for (m, out) in [(&qn, &mut q), (&kn, &mut k)] {
                    Self::mat(hmm, dev, m, &mut sc.w)?;
                    math::rms_norm(out, &sc.w, d.eps, &mut norm);
                    out.copy_from_slice(&norm);
                }
            }
            for (i, s) in batch.iter().enumerate() {
                for hq in q[i * hr * hd..(i + 1) * hr * hd].chunks_exact_mut(hd) {
                    self.layout.rope.apply(hq, s.pos);
                }
                for hk in k[i * kvr * hd..(i + 1) * kvr * hd].chunks_exact_mut(hd) {
                    self.layout.rope.apply(hk, s.pos);
                }
                // Append the token's [keys of the rank's KV heads, their values] to its block.
                row[..kvr * hd].copy_from_slice(&k[i * kvr * hd..(i + 1) * kvr * hd]);
                row[kvr * hd..].copy_from_slice(&v[i * kvr * hd..(i + 1) * kvr * hd]);
                math::narrow(&row, &mut sc.bytes);
                let block = s.blocks[(s.pos / kv.block_tokens) as usize];
                let at = kv.offset(block, l as u32, s.pos % kv.block_tokens);
                hmm.write_view(dev.kv, at, &sc.bytes)?;
            }
            // The rank's first KV head: its own share, or the one head its query heads share.
            let kv_start = (r * hr) / group;
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
                for c in 0..kvr {
                    // This KV head's keys and values over the context, `[ctx, hd]` each.
                    keys.clear();
                    vals.clear();
                    for t in ctx_vals.chunks_exact(kvw) {
                        keys.extend_from_slice(&t[c * hd..(c + 1) * hd]);
                        vals.extend_from_slice(&t[(kvr + c) * hd..(kvr + c + 1) * hd]);
                    }
                    for j in 0..hr {
                        if (r * hr + j) / group != kv_start + c {
                            continue;
                        }
                        let qrow = &q[(i * hr + j) * hd..(i * hr + j + 1) * hd];
                        let mut scores = vec![0.0f32; ctx];
                        math::matmul_t(qrow, 1, hd, &keys, ctx, &mut scores);
                        for x in &mut scores {
                            *x *= scale;
                        }
                        math::softmax(&mut scores);
                        let out = &mut a[(i * hr + j) * hd..(i * hr + j + 1) * hd];
                        math::matmul(&scores, 1, ctx, &vals, hd, out);
                    }
                }
            }
            Self::mat(hmm, dev, &o_proj, &mut sc.w)?; // [h, hr·hd]
            let mut o = vec![0.0f32; b * h];
            math::matmul_t(&a, b, hr * hd, &sc.w, h, &mut o);
            for (x, y) in attn.iter_mut().zip(&o) {
                *x += y;
            }
        }
        Ok(attn)
    }
}
