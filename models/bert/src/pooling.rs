//! Sentence embeddings as sentence-transformers computes them: the mean of the last hidden
//! states over the real tokens (weighted by the attention mask), then L2 normalisation.

/// Mean of the rows of `hidden` (`[B, L, D]`, row-major) whose `mask` (`[B, L]`) is non-zero,
/// per sequence: `[B, D]`. A sequence without tokens gives zeros (the count is clamped to 1e-9,
/// as sentence-transformers does).
pub fn mean_pool(hidden: &[f32], mask: &[u32], batch: usize, len: usize, dim: usize) -> Vec<f32> {
    let mut out = vec![0f32; batch * dim];
    for b in 0..batch {
        let o = &mut out[b * dim..(b + 1) * dim];
        let mut count = 0f32;
        for t in 0..len {
            if mask[b * len + t] == 0 {
                continue;
            }
            count += 1.0;
            let row = &hidden[(b * len + t) * dim..(b * len + t + 1) * dim];
            o.iter_mut().zip(row).for_each(|(s, &x)| *s += x);
        }
        let count = count.max(1e-9);
        o.iter_mut().for_each(|s| *s /= count);
    }
    out
}

/// Scales each row of `x` (`[rows, dim]`) to unit Euclidean length (`torch.nn.functional.normalize`:
/// the norm is clamped to 1e-12, so a zero row stays zero).
pub fn l2_normalize(x: &mut [f32], dim: usize) {
    for row in x.chunks_mut(dim) {
        let norm = row
            .iter()
            .map(|&v| v as f64 * v as f64)
            .sum::<f64>()
            .sqrt()
            .max(1e-12) as f32;
        row.iter_mut().for_each(|v| *v /= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_is_left_out_of_the_mean_and_rows_get_unit_length() {
        // One sequence of 3 positions (the last is padding), width 2.
        let hidden = [1.0, 2.0, 3.0, 4.0, 100.0, 100.0];
        let mut m = mean_pool(&hidden, &[1, 1, 0], 1, 3, 2);
        assert_eq!(m, [2.0, 3.0]);
        l2_normalize(&mut m, 2);
        let n = (13f32).sqrt();
        assert!((m[0] - 2.0 / n).abs() < 1e-7 && (m[1] - 3.0 / n).abs() < 1e-7);
        let mut zero = [0.0, 0.0];
        l2_normalize(&mut zero, 2);
        assert_eq!(zero, [0.0, 0.0]);
    }
}
