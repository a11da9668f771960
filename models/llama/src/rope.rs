//! Rotary position embeddings: each pair of dimensions of a head turns by `pos · θ^(-2i/d)`.

use crate::config::RopeLayout;

/// The cosines and sines of every pair at a set of positions, computed once per forward pass
/// (in f64, rounded to f32) and applied to the queries and keys of every layer.
pub(crate) struct RopeTable {
    half: usize,
    layout: RopeLayout,
    /// Per position: `half` cosines then `half` sines.
    cs: Vec<f32>,
}

impl RopeTable {
    /// The table of `positions` for heads of `head_dim` with base `theta`.
    pub fn new(
        positions: impl Iterator<Item = usize>,
        head_dim: usize,
        theta: f64,
        layout: RopeLayout,
    ) -> RopeTable {
        let half = head_dim / 2;
        let inv: Vec<f64> = (0..half)
            .map(|i| theta.powf(-((2 * i) as f64) / head_dim as f64))
            .collect();
        let mut cs = Vec::new();
        for p in positions {
            cs.extend(inv.iter().map(|f| (p as f64 * f).cos() as f32));
            cs.extend(inv.iter().map(|f| (p as f64 * f).sin() as f32));
        }
        RopeTable { half, layout, cs }
    }

    /// Rotates every head of `x` (heads of `2 · half` values) by the angles of table row `row`.
    pub fn rotate(&self, row: usize, x: &mut [f32]) {
        let h = self.half;
        let (cos, sin) = self.cs[2 * h * row..2 * h * (row + 1)].split_at(h);
        for head in x.chunks_exact_mut(2 * h) {
            match self.layout {
                RopeLayout::Halves => {
                    let (a, b) = head.split_at_mut(h);
                    for i in 0..h {
                        let (x0, x1) = (a[i], b[i]);
                        a[i] = x0 * cos[i] - x1 * sin[i];
                        b[i] = x0 * sin[i] + x1 * cos[i];
                    }
                }
                RopeLayout::Pairs => {
                    for i in 0..h {
                        let (x0, x1) = (head[2 * i], head[2 * i + 1]);
                        head[2 * i] = x0 * cos[i] - x1 * sin[i];
                        head[2 * i + 1] = x0 * sin[i] + x1 * cos[i];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotations_keep_norms_and_relative_angles() {
        for layout in [RopeLayout::Halves, RopeLayout::Pairs] {
            let t = RopeTable::new([3usize, 7, 10, 14].into_iter(), 8, 10_000.0, layout);
            let q0: Vec<f32> = (0..8).map(|i| (i as f32 * 0.37).sin()).collect();
            let k0: Vec<f32> = (0..8).map(|i| (i as f32 * 0.91).cos()).collect();
            let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
            // q at 7 against k at 3 equals q at 14 against k at 10: only the offset matters.
            let rot = |row: usize, v: &[f32]| {
                let mut v = v.to_vec();
                t.rotate(row, &mut v);
                v
            };
            let (a, b) = (dot(&rot(1, &q0), &rot(0, &k0)), dot(&rot(3, &q0), &rot(2, &k0)));
            assert!((a - b).abs() < 1e-5, "{layout:?}: {a} vs {b}");
            assert!((dot(&rot(2, &q0), &rot(2, &q0)) - dot(&q0, &q0)).abs() < 1e-5);
        }
    }
}
