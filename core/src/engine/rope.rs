//! Rotary position embedding: the per-pair inverse frequencies (from `rope_theta`, and any
//! scaling the config asks for) and the two layouts the families use.

use crate::model::{ModelSpec, Yarn};

/// The rotary table of a model's attention.
#[derive(Clone, Debug)]
pub struct Rope {
    /// One inverse frequency per rotated pair.
    pub inv_freq: Vec<f32>,
    /// Multiplies cos and sin (YaRN's attention factor; 1 otherwise).
    pub attention_factor: f32,
    /// Pairs `(2i, 2i+1)` (DeepSeek) rather than `(i, i + d/2)` (`rotate_half`).
    pub interleaved: bool,
}

impl Rope {
    /// The rotary table of `model`'s attention over `dim` values: YaRN where the config asks
    /// for it, plain otherwise; in the layout `interleaved` names.
    pub fn for_model(model: &ModelSpec, dim: usize, interleaved: bool) -> Self {
        let theta = model.rope_theta as f32;
        let mut r = match &model.rope_scaling {
            Some(y) => Self::yarn(dim, theta, y),
            None => Self::plain(dim, theta),
        };
        r.interleaved = interleaved;
        r
    }

    /// YaRN (`_compute_yarn_parameters` in transformers, in the same f32/f64 steps): each pair's
    /// frequency blends the interpolated `1/(factor·θ^(2i/d))` and the original along a linear
    /// ramp between the correction dims of `beta_fast` and `beta_slow` rotations.
    pub fn yarn(dim: usize, theta: f32, y: &Yarn) -> Self {
        let base = f64::from(theta);
        let orig = f64::from(y.original_max_position_embeddings);
        let correction = |rot: f64| {
            (dim as f64 * (orig / (rot * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * base.ln())
        };
        let (mut low, mut high) = (correction(y.beta_fast), correction(y.beta_slow));
        if y.truncate {
            (low, high) = (low.floor(), high.ceil());
        }
        let (low, mut high) = (low.max(0.0), high.min(dim as f64 - 1.0));
        if low == high {
            high += 0.001; // as the reference: no zero-width ramp
        }
        let (low, high) = (low as f32, high as f32);
        let factor = y.factor as f32;
        let inv_freq = (0..dim / 2)
            .map(|i| {
                let pos = theta.powf((2 * i) as f32 / dim as f32);
                let (extra, inter) = (1.0 / pos, 1.0 / (factor * pos));
                let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                let keep = 1.0 - ramp;
                inter * (1.0 - keep) + extra * keep
            })
            .collect();
        Self {
            inv_freq,
            attention_factor: y.attention_factor() as f32,
            interleaved: false,
        }
    }

    /// Plain RoPE over `dim` values (`dim` even) with base `theta`.
    pub fn plain(dim: usize, theta: f32) -> Self {
        Self {
            inv_freq: (0..dim / 2)
                .map(|i| theta.powf(-2.0 * i as f32 / dim as f32))
                .collect(),
            attention_factor: 1.0,
            interleaved: false,
        }
    }

    /// Rotates `v` at position `pos` in this table's layout.
    pub fn apply(&self, v: &mut [f32], pos: u32) {
        if self.interleaved {
            self.interleaved(v, pos)
        } else {
            self.half(v, pos)
        }
    }

    fn cos_sin(&self, i: usize, pos: u32) -> (f32, f32) {
        let (s, c) = (pos as f32 * self.inv_freq[i]).sin_cos();
        (c * self.attention_factor, s * self.attention_factor)
    }

    /// Rotates pairs `(2i, 2i+1)` of `v` (DeepSeek's MLA layout).
    pub fn interleaved(&self, v: &mut [f32], pos: u32) {
        for i in 0..v.len() / 2 {
            let (c, s) = self.cos_sin(i, pos);
            let (a, b) = (v[2 * i], v[2 * i + 1]);
            v[2 * i] = a * c - b * s;
            v[2 * i + 1] = a * s + b * c;
        }
    }

    /// Rotates pairs `(i, i + d/2)` of `v` (transformers' `rotate_half`: Llama, Qwen, Mixtral).
    pub fn half(&self, v: &mut [f32], pos: u32) {
        let n = v.len() / 2;
        for i in 0..n {
            let (c, s) = self.cos_sin(i, pos);
            let (a, b) = (v[i], v[i + n]);
            v[i] = a * c - b * s;
            v[i + n] = b * c + a * s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_zero_is_the_identity_and_both_layouts_rotate_the_same_pairs() {
        let r = Rope::plain(4, 10000.0);
        let mut v = vec![1.0, 2.0, 3.0, 4.0];
        r.interleaved(&mut v, 0);
        assert_eq!(v, [1.0, 2.0, 3.0, 4.0]);
        // Pair (x0, x1) interleaved is pair (x0, x2) in half layout.
        let mut a = vec![1.0, 2.0, 0.5, -1.0];
        let mut b = vec![1.0, 0.5, 2.0, -1.0];
        r.interleaved(&mut a, 7);
        r.half(&mut b, 7);
        assert_eq!([a[0], a[1], a[2], a[3]], [b[0], b[2], b[1], b[3]]);
    }
}
