//! The numeric kernels of a decode step: bf16 → f32 widening, GEMM through `matrixmultiply`,
//! RMSNorm, SiLU, softmax and RoPE. All single-threaded and in a fixed order, so a result depends
//! only on its inputs — never on the batch it ran in or the device that held the weights.

use half::bf16;

/// Widen little-endian bf16 bytes into `out` (resized to fit).
pub fn widen(bytes: &[u8], out: &mut Vec<f32>) {
    // bf16 is the top half of an f32: a shift, written so the loop vectorizes (this runs over
    // every weight byte of every step).
    out.clear();
    out.resize(bytes.len() / 2, 0.0);
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
    }
}

/// Widen little-endian f16 bytes into `out`.
pub fn widen_f16(bytes: &[u8], out: &mut Vec<f32>) {
    out.clear();
    out.extend(
        bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
    );
}

/// Little-endian f32 bytes into `out`.
pub fn widen_f32(bytes: &[u8], out: &mut Vec<f32>) {
    out.clear();
    out.extend(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
    );
}

/// Narrow f32 values to little-endian bf16 bytes (the KV cache's format).
pub fn narrow(values: &[f32], out: &mut Vec<u8>) {
    out.clear();
    for v in values {
        out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes());
    }
}

/// `c[rows×cols] = a · b` for strided operands (element `(i, j)` of a matrix at
/// `ptr + i·rs + j·cs`), after checking every touched element lies inside its slice.
fn gemm(
    (rows, inner, cols): (usize, usize, usize),
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    (rsb, csb): (usize, usize),
    c: &mut [f32],
    (rsc, csc): (usize, usize),
) {
    let last = |r: usize, cl: usize, rs: usize, cs: usize| (r - 1) * rs + (cl - 1) * cs;
    if rows == 0 || cols == 0 {
        return;
    }
    if inner == 0 {
        for i in 0..rows {
            for j in 0..cols {
                c[i * rsc + j * csc] = 0.0;
            }
        }
        return;
    }
    assert!(last(rows, inner, rsa, csa) < a.len());
    assert!(last(inner, cols, rsb, csb) < b.len());
    assert!(last(rows, cols, rsc, csc) < c.len());
    // SAFETY: the asserts keep every strided access inside its slice; `c` does not alias `a` or
    // `b` (distinct borrows), and its strides give distinct elements.
    unsafe {
        matrixmultiply::sgemm(
            rows,
            inner,
            cols,
            1.0,
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            0.0,
            c.as_mut_ptr(),
            rsc as isize,
            csc as isize,
        );
    }
}

/// `out[m×n] = x[m×k] · wᵀ` where `w` is `n×k` row-major (a weight stored `[out, in]`).
/// Computed as `outᵀ = w · xᵀ`: the weight is the left operand, read row by row as stored, and
/// the result is written transposed straight into `out`.
pub fn matmul_t(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, out: &mut [f32]) {
    gemm((n, k, m), w, (k, 1), x, (1, k), out, (1, n));
}

/// `out[m×n] = x[m×k] · w[k×n]` (both row-major).
pub fn matmul(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, out: &mut [f32]) {
    gemm((m, k, n), x, (k, 1), w, (n, 1), out, (n, 1));
}

/// RMSNorm of each row of `x` (rows of `w.len()`), into `out`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut Vec<f32>) {
    let d = w.len();
    out.clear();
    out.resize(x.len(), 0.0);
    for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let r = 1.0 / (ms + eps).sqrt();
        for ((o, v), g) in o.iter_mut().zip(row).zip(w) {
            *o = v * r * g;
        }
    }
}

/// `gate[i] = silu(gate[i]) * up[i]`.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// Softmax in place.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    if sum > 0.0 {
        for v in x.iter_mut() {
            *v /= sum;
        }
    }
}

/// Indices of the `k` largest values, largest first; ties go to the lower index.
pub fn top_k(x: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[b].total_cmp(&x[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Group-limited top-k (DeepSeek's `group_limited_greedy`): `x` falls in `groups` equal groups;
/// the `kept` groups with the highest maximum are kept (ties to the lower group), and the `k`
/// highest entries among their members are returned (ties to the lower index).
pub fn group_limited_top_k(x: &[f32], k: usize, groups: usize, kept: usize) -> Vec<usize> {
    let size = x.len() / groups.max(1);
    let best: Vec<f32> = x
        .chunks(size.max(1))
        .map(|g| g.iter().copied().fold(f32::NEG_INFINITY, f32::max))
        .collect();
    let keep = top_k(&best, kept);
    let mut idx: Vec<usize> = (0..x.len())
        .filter(|i| keep.contains(&(i / size.max(1))))
        .collect();
    idx.sort_by(|&a, &b| x[b].total_cmp(&x[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_limited_top_k_takes_experts_of_the_best_groups_only() {
        // Groups of 2: best scores 0.9 (g0), 0.5 (g1), 0.8 (g2); two kept: g0 and g2.
        let x = [0.9, 0.1, 0.5, 0.45, 0.8, 0.7];
        assert_eq!(group_limited_top_k(&x, 3, 3, 2), [0, 4, 5]);
        assert_eq!(top_k(&x, 3), [0, 4, 5]);
        assert_eq!(
            group_limited_top_k(&x, 2, 3, 1),
            [0, 1],
            "one group: its two members"
        );
    }

    #[test]
    fn gemm_rows_do_not_depend_on_the_batch() {
        // The determinism the engine relies on: a row's result is the same whatever other rows
        // share the call.
        let (k, n) = (300, 77);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0)
            .collect();
        let x: Vec<f32> = (0..13 * k)
            .map(|i| ((i * 11 % 97) as f32 - 48.0) / 32.0)
            .collect();
        let mut all = vec![0.0; 13 * n];
        matmul_t(&x, 13, k, &w, n, &mut all);
        for r in 0..13 {
            let mut one = vec![0.0; n];
            matmul_t(&x[r * k..(r + 1) * k], 1, k, &w, n, &mut one);
            assert_eq!(one, all[r * n..(r + 1) * n], "row {r}");
        }
    }

    #[test]
    fn kernels() {
        let mut out = vec![0.0; 2];
        matmul(&[1.0, 2.0], 1, 2, &[1.0, 2.0, 3.0, 4.0], 2, &mut out);
        assert_eq!(out, [7.0, 10.0]);
        matmul_t(&[1.0, 2.0], 1, 2, &[1.0, 2.0, 3.0, 4.0], 2, &mut out);
        assert_eq!(out, [5.0, 11.0]);
        let mut s = vec![1.0, 1.0];
        softmax(&mut s);
        assert_eq!(s, [0.5, 0.5]);
        assert_eq!(top_k(&[0.1, 0.5, 0.5, 0.2], 3), [1, 2, 3]);
        let mut b = Vec::new();
        narrow(&[1.5, -2.0], &mut b);
        let mut f = Vec::new();
        widen(&b, &mut f);
        assert_eq!(f, [1.5, -2.0]);
    }
}
