//! Rotary position embedding: the per-pair inverse frequencies (from `rope_theta`, and any
//! scaling the config asks for) and the two layouts the families use.

/// The rotary table of a model's attention.
#[derive(Clone, Debug)]
pub struct Rope {
    /// One inverse frequency per rotated pair.
    pub inv_freq: Vec<f32>,
    /// Multiplies cos and sin (YaRN's attention factor; 1 otherwise).
    pub attention_factor: f32,
}

impl Rope {
    /// Plain RoPE over `dim` values (`dim` even) with base `theta`.
    pub fn plain(dim: usize, theta: f32) -> Self {
        Self {
            inv_freq: (0..dim / 2)
                .map(|i| theta.powf(-2.0 * i as f32 / dim as f32))
                .collect(),
            attention_factor: 1.0,
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
