//! [`QMatrix`]: a weight matrix kept in its quantized blocks, and its products with f32 rows.

use std::sync::{Arc, OnceLock};

use rayon::prelude::*;

use super::activations::QuantizedActivations;
use super::dot::{dot_f32, dot_tile};
use super::formats::{dequantize, QuantFormat};
use crate::{Error, Result, Tensor};

/// Bytes a [`QMatrix`] reads its blocks from: an owned buffer or a shared memory map.
pub type QBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// How a product treats the activations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuantPath {
    /// Activations quantized per block of 32 to 8 bits, integer dot products (llama.cpp's way;
    /// the fast one).
    #[default]
    Int8Activations,
    /// f32 activations against the dequantized blocks (slower; no activation rounding).
    F32Activations,
}

/// A `[rows, cols]` weight matrix stored as blocks of a [`QuantFormat`], row after row (ggml's
/// layout: a GGUF tensor with dims `[cols, rows]`). Products compute `x @ Wᵀ`, the layout of a
/// linear layer's `[out, in]` weight.
#[derive(Clone)]
pub struct QMatrix {
    format: QuantFormat,
    rows: usize,
    cols: usize,
    bytes: QBytes,
    offset: usize,
    row_bytes: usize,
    /// The blocks repacked for the 16-row kernel, made on the first product that uses it.
    packed: Arc<OnceLock<Vec<u8>>>,
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QMatrix({} [{}, {}])", self.format, self.rows, self.cols)
    }
}

/// A raw output pointer that parallel tasks writing disjoint columns share.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only used by tasks that write disjoint elements of one live buffer.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so closures capture the whole `Send` wrapper, not the field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Output rows per parallel task: enough to amortise the task, small enough to balance.
const ROWS_PER_TASK: usize = 32;

impl QMatrix {
    /// The matrix whose blocks are `bytes[offset..]` (exactly `rows` rows of `cols` weights).
    pub fn new(
        format: QuantFormat,
        rows: usize,
        cols: usize,
        bytes: QBytes,
        offset: usize,
    ) -> Result<QMatrix> {
        if cols == 0 {
            return Err(Error::InvalidArgument {
                op: "QMatrix",
                reason: format!("a {format} matrix needs at least one column"),
            });
        }
        let row_bytes = format.bytes_for(cols)?;
        let need = row_bytes
            .checked_mul(rows)
            .ok_or_else(|| Error::InvalidArgument {
                op: "QMatrix",
                reason: format!("{rows} rows of {cols} {format} weights overflow the address space"),
            })?;
        let have = (*bytes).as_ref().len();
        if offset.checked_add(need).is_none_or(|end| end > have) {
            return Err(Error::InvalidArgument {
                op: "QMatrix",
                reason: format!(
                    "{rows} × {cols} {format} weights need {need} bytes at offset {offset}, but the buffer holds {have}"
                ),
            });
        }
        Ok(QMatrix {
            format,
            rows,
            cols,
            bytes,
            offset,
            row_bytes,
            packed: Arc::new(OnceLock::new()),
        })
    }

    /// The matrix over an owned buffer of blocks.
    pub fn from_bytes(format: QuantFormat, rows: usize, cols: usize, bytes: Vec<u8>) -> Result<QMatrix> {
        QMatrix::new(format, rows, cols, Arc::new(bytes), 0)
    }

    /// The block format.
    pub fn format(&self) -> QuantFormat {
        self.format
    }

    /// Output features (rows of the weight).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features (weights per row).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes the blocks take.
    pub fn size_bytes(&self) -> usize {
        self.row_bytes * self.rows
    }

    fn blocks(&self) -> &[u8] {
        &(*self.bytes).as_ref()[self.offset..self.offset + self.size_bytes()]
    }

    /// The blocks of row `r`.
    pub fn row_bytes(&self, r: usize) -> &[u8] {
        &self.blocks()[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Dequantizes row `r` into `out` (`cols` values): an embedding lookup.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<()> {
        if r >= self.rows {
            return Err(Error::IndexOutOfRange {
                op: "QMatrix::dequantize_row",
                index: r as i64,
                dim: 0,
                size: self.rows,
            });
        }
        dequantize(self.format, self.row_bytes(r), out)
    }

    /// The whole matrix as a dense f32 tensor `[rows, cols]`.
    pub fn dequantize(&self) -> Result<Tensor> {
        let mut out = vec![0f32; self.rows * self.cols];
        dequantize(self.format, self.blocks(), &mut out)?;
        Tensor::from_vec(out, [self.rows, self.cols])
    }

    fn check_rows(&self, op: &'static str, rows: usize, cols: usize, out: usize) -> Result<()> {
        if cols != self.cols || out != rows * self.rows {
            return Err(Error::InvalidArgument {
                op,
                reason: format!(
                    "{rows} rows of {cols} values into {out} outputs against a [{}, {}] {} matrix: expected rows of {} and rows × {} outputs",
                    self.rows, self.cols, self.format, self.cols, self.rows
                ),
            });
        }
        Ok(())
    }

    /// `out = x @ Wᵀ` for `m` rows of `x` (`[m, cols]` → `[m, rows]`) along `path`.
    pub fn matmul(&self, x: &[f32], m: usize, path: QuantPath, out: &mut [f32]) -> Result<()> {
        if x.len() != m * self.cols {
            return Err(Error::InvalidArgument {
                op: "QMatrix::matmul",
                reason: format!(
                    "{} values are not {m} rows of the matrix's {} columns",
                    x.len(),
                    self.cols
                ),
            });
        }
        match path {
            QuantPath::Int8Activations => {
                let acts = QuantizedActivations::quantize(x, m, self.cols)?;
                self.matmul_quantized(&acts, out)
            }
            QuantPath::F32Activations => {
                self.check_rows("QMatrix::matmul", m, self.cols, out.len())?;
                self.for_row_tiles(m, out, self.blocks(), self.row_bytes, |w, tile| {
                    for (row, o) in w.chunks_exact(self.row_bytes).zip(tile.chunks_exact_mut(m)) {
                        for (i, o) in o.iter_mut().enumerate() {
                            *o = dot_f32(self.format, row, &x[i * self.cols..(i + 1) * self.cols]);
                        }
                    }
                });
                Ok(())
            }
        }
    }

    /// `out = acts @ Wᵀ` with activations already quantized (one quantization shared by the
    /// products that read the same input).
    pub fn matmul_quantized(&self, acts: &QuantizedActivations, out: &mut [f32]) -> Result<()> {
        QMatrix::matmul_quantized_many(&[self], acts, &mut [out])
    }

    /// `outs[i] = acts @ mats[i]ᵀ` for matrices that read the same input (a layer's query, key
    /// and value projections; its gate and up projections): on the packed kernel, one parallel
    /// loop over the row tasks of all of them, so a decoding step pays one fork-join where it
    /// would pay one per matrix. Each output is computed as by [`QMatrix::matmul_quantized`].
    pub fn matmul_quantized_many(
        mats: &[&QMatrix],
        acts: &QuantizedActivations,
        outs: &mut [&mut [f32]],
    ) -> Result<()> {
        let m = acts.rows();
        if mats.len() != outs.len() {
            return Err(Error::InvalidArgument {
                op: "QMatrix::matmul_quantized_many",
                reason: format!("{} matrices but {} outputs", mats.len(), outs.len()),
            });
        }
        for (q, o) in mats.iter().zip(outs.iter()) {
            q.check_rows("QMatrix::matmul_quantized", m, acts.cols(), o.len())?;
        }
        let rows: Vec<_> = (0..m).map(|i| acts.row(i)).collect();
        // The matrices with a packed kernel run together; the others on the tile kernel.
        #[cfg(target_arch = "x86_64")]
        let packed_ok = |q: &QMatrix| super::packed::supported(q.format, q.rows);
        #[cfg(not(target_arch = "x86_64"))]
        let packed_ok = |_: &QMatrix| false;
        #[cfg(target_arch = "x86_64")]
        {
            use super::packed::{dot_groups, pack, GROUP};
            let packed: Vec<(usize, &[u8], SendPtr)> = mats
                .iter()
                .zip(outs.iter_mut())
                .enumerate()
                .filter(|(_, (q, _))| packed_ok(q))
                .map(|(i, (q, o))| {
                    let blocks = q.cols / super::activations::QK;
                    let p = q
                        .packed
                        .get_or_init(|| pack(q.format, q.blocks(), q.rows, blocks));
                    (i, p.as_slice(), SendPtr(o.as_mut_ptr()))
                })
                .collect();
            let run = |(j, t): (usize, usize)| {
                let (i, packed, out) = packed[j];
                let q = mats[i];
                let (n, blocks) = (q.rows, q.cols / super::activations::QK);
                let group_bytes = packed.len() / (n / GROUP);
                let first = t * ROWS_PER_TASK;
                let groups = ROWS_PER_TASK.min(n - first) / GROUP;
                let w = &packed[first / GROUP * group_bytes..(first / GROUP + groups) * group_bytes];
                // SAFETY: output `i` holds m × n values (checked above); task `(j, t)` alone
                // writes its columns of weight rows `first..first + 16 · groups`.
                unsafe { dot_groups(q.format, w, blocks, &rows, out.get(), n, first) }
            };
            let tasks: Vec<(usize, usize)> = packed
                .iter()
                .enumerate()
                .flat_map(|(j, &(i, _, _))| (0..mats[i].rows.div_ceil(ROWS_PER_TASK)).map(move |t| (j, t)))
                .collect();
            if tasks.len() > 1 {
                tasks.into_par_iter().for_each(run);
            } else {
                tasks.into_iter().for_each(run);
            }
        }
        for (q, out) in mats.iter().zip(outs.iter_mut()) {
            if !packed_ok(q) {
                q.for_row_tiles(m, out, q.blocks(), q.row_bytes, |w, tile| {
                    dot_tile(q.format, w, q.row_bytes, &rows, tile)
                });
            }
        }
        Ok(())
    }

    /// Runs `f(data of a tile of weight rows, their outputs [tile rows, m])` over tiles of rows
    /// in parallel (`data` holds `rb` bytes per weight row, tile after tile), and scatters the
    /// results into `out` (`[m, rows]`).
    fn for_row_tiles(
        &self,
        m: usize,
        out: &mut [f32],
        blocks: &[u8],
        rb: usize,
        f: impl Fn(&[u8], &mut [f32]) + Sync,
    ) {
        let n = self.rows;
        if m == 0 || n == 0 {
            return;
        }
        let run = |t: usize, chunk: &mut [f32]| {
            let first = t * ROWS_PER_TASK;
            let rows = chunk.len() / m;
            f(&blocks[first * rb..(first + rows) * rb], chunk)
        };
        if m == 1 {
            out.par_chunks_mut(ROWS_PER_TASK)
                .enumerate()
                .for_each(|(t, c)| run(t, c));
            return;
        }
        let mut by_row = vec![0f32; n * m];
        by_row
            .par_chunks_mut(ROWS_PER_TASK * m)
            .enumerate()
            .for_each(|(t, c)| run(t, c));
        scatter_rows(&by_row, m, out);
    }
}

/// Writes results computed per weight row (`by_row`: `[n, m]`) into the product's layout
/// (`out`: `[m, n]`).
pub(crate) fn scatter_rows(by_row: &[f32], m: usize, out: &mut [f32]) {
    let n = by_row.len() / m.max(1);
    for (r, col) in by_row.chunks_exact(m.max(1)).enumerate() {
        for (i, &v) in col.iter().enumerate() {
            out[i * n + r] = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dot::dot_portable;
    use rand::{Rng, SeedableRng};

    /// Random blocks with finite, moderate f16 scales.
    fn random_blocks(format: QuantFormat, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut bytes: Vec<u8> = (0..format.bytes_for(rows * cols).unwrap())
            .map(|_| rng.gen())
            .collect();
        let scale = |rng: &mut rand_chacha::ChaCha8Rng| {
            half::f16::from_f32(rng.gen_range(-0.05f32..0.05)).to_le_bytes()
        };
        for blk in bytes.chunks_exact_mut(format.block_bytes()) {
            let spots: &[usize] = match format {
                QuantFormat::Q4_0 | QuantFormat::Q8_0 => &[0],
                QuantFormat::Q4_1 | QuantFormat::Q4K => &[0, 2],
                QuantFormat::Q6K => &[208],
            };
            for &at in spots {
                blk[at..at + 2].copy_from_slice(&scale(&mut rng));
            }
        }
        bytes
    }

    fn reference(w: &Tensor, x: &[f32], m: usize) -> Vec<f64> {
        let w = w.to_vec::<f32>().unwrap();
        let (n, k) = (w.len() / (x.len() / m), x.len() / m);
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for r in 0..n {
                out[i * n + r] = (0..k).map(|j| x[i * k + j] as f64 * w[r * k + j] as f64).sum();
            }
        }
        out
    }

    #[test]
    fn products_match_the_dequantized_matrix_for_every_format_and_path() {
        let (rows, cols, m) = (40, 512, 5);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let x: Vec<f32> = (0..m * cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        for (s, format) in QuantFormat::ALL.into_iter().enumerate() {
            let q =
                QMatrix::from_bytes(format, rows, cols, random_blocks(format, rows, cols, s as u64)).unwrap();
            let want = reference(&q.dequantize().unwrap(), &x, m);
            let scale = want.iter().fold(0f64, |a, &v| a.max(v.abs()));
            for path in [QuantPath::F32Activations, QuantPath::Int8Activations] {
                let mut got = vec![0f32; m * rows];
                q.matmul(&x, m, path, &mut got).unwrap();
                // f32 path: rounding only; int8 path: activation codes are within 1/254 of max.
                let tol = if path == QuantPath::F32Activations {
                    1e-5
                } else {
                    2e-2
                };
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (*g as f64 - w).abs() <= tol * scale,
                        "{format} {path:?}: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn packed_products_agree_with_the_portable_kernel_and_not_with_the_batch() {
        // 48 rows: three packed groups (two tasks of 32 rows, the second half full).
        let (rows, cols, m) = (48, 32 * 9, 7);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let x: Vec<f32> = (0..m * cols).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
        let acts = QuantizedActivations::quantize(&x, m, cols).unwrap();
        for format in [QuantFormat::Q4_0, QuantFormat::Q4_1, QuantFormat::Q8_0] {
            let q = QMatrix::from_bytes(format, rows, cols, random_blocks(format, rows, cols, 19)).unwrap();
            let mut got = vec![0f32; m * rows];
            q.matmul_quantized(&acts, &mut got).unwrap();
            for i in 0..m {
                for r in 0..rows {
                    let want = dot_portable(format, q.row_bytes(r), &acts.row(i));
                    let g = got[i * rows + r];
                    assert!(
                        (g - want).abs() <= 1e-4 * want.abs().max(1.0),
                        "{format} row {r} act {i}: {g} vs {want}"
                    );
                }
            }
            // Each activation row alone gives the same bits as in the batch.
            for i in 0..m {
                let one = QuantizedActivations::quantize(&x[i * cols..(i + 1) * cols], 1, cols).unwrap();
                let mut alone = vec![0f32; rows];
                q.matmul_quantized(&one, &mut alone).unwrap();
                assert_eq!(alone, got[i * rows..(i + 1) * rows], "{format} act {i}");
            }
        }
    }

    #[test]
    fn simd_kernels_agree_with_the_portable_kernel() {
        let (rows, cols, m) = (8, 32 * 7, 6);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let x: Vec<f32> = (0..m * cols).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
        let acts = QuantizedActivations::quantize(&x, m, cols).unwrap();
        for format in [QuantFormat::Q4_0, QuantFormat::Q4_1, QuantFormat::Q8_0] {
            let q = QMatrix::from_bytes(format, rows, cols, random_blocks(format, rows, cols, 11)).unwrap();
            let mut got = vec![0f32; m * rows];
            q.matmul_quantized(&acts, &mut got).unwrap();
            for i in 0..m {
                for r in 0..rows {
                    let p = dot_portable(format, q.row_bytes(r), &acts.row(i));
                    let g = got[i * rows + r];
                    assert!((g - p).abs() <= 1e-4 * p.abs().max(1.0), "{format}: {g} vs {p}");
                }
            }
        }
    }

    #[test]
    fn a_row_does_not_depend_on_the_other_rows_or_the_thread_count() {
        let (rows, cols) = (100, 256);
        let q = QMatrix::from_bytes(
            QuantFormat::Q4_1,
            rows,
            cols,
            random_blocks(QuantFormat::Q4_1, rows, cols, 5),
        )
        .unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let x: Vec<f32> = (0..7 * cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let mut all = vec![0f32; 7 * rows];
        q.matmul(&x, 7, QuantPath::Int8Activations, &mut all).unwrap();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        for i in 0..7 {
            let mut one = vec![0f32; rows];
            pool.install(|| {
                q.matmul(
                    &x[i * cols..(i + 1) * cols],
                    1,
                    QuantPath::Int8Activations,
                    &mut one,
                )
            })
            .unwrap();
            assert_eq!(one, all[i * rows..(i + 1) * rows]);
        }
    }

    #[test]
    fn products_sharing_an_input_equal_the_products_one_at_a_time() {
        let (cols, m) = (32 * 5, 6);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
        let x: Vec<f32> = (0..m * cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let acts = QuantizedActivations::quantize(&x, m, cols).unwrap();
        // 64 and 48 rows take the packed kernel where there is one; 20 rows never do.
        for rows in [[64, 48], [48, 20]] {
            let mats: Vec<QMatrix> = rows
                .iter()
                .enumerate()
                .map(|(s, &r)| {
                    let f = QuantFormat::Q4_1;
                    QMatrix::from_bytes(f, r, cols, random_blocks(f, r, cols, 30 + s as u64)).unwrap()
                })
                .collect();
            let (mut a, mut b) = (vec![0f32; m * rows[0]], vec![0f32; m * rows[1]]);
            QMatrix::matmul_quantized_many(&[&mats[0], &mats[1]], &acts, &mut [&mut a, &mut b]).unwrap();
            for (q, got) in mats.iter().zip([&a, &b]) {
                let mut alone = vec![0f32; m * q.rows()];
                q.matmul_quantized(&acts, &mut alone).unwrap();
                assert_eq!(&alone, got);
            }
            assert!(QMatrix::matmul_quantized_many(&[&mats[0], &mats[1]], &acts, &mut [&mut a]).is_err());
        }
    }

    #[test]
    fn wrong_sizes_are_errors() {
        assert!(QMatrix::from_bytes(QuantFormat::Q8_0, 2, 32, vec![0; 67]).is_err());
        assert!(QMatrix::from_bytes(QuantFormat::Q8_0, 2, 30, vec![0; 68]).is_err());
        let q = QMatrix::from_bytes(QuantFormat::Q8_0, 2, 32, vec![0; 68]).unwrap();
        let mut out = vec![0f32; 2];
        assert!(q
            .matmul(&[0.0; 31], 1, QuantPath::Int8Activations, &mut out)
            .is_err());
        assert!(q
            .matmul(&[0.0; 32], 1, QuantPath::Int8Activations, &mut [0f32; 3])
            .is_err());
        assert!(q.dequantize_row(2, &mut [0f32; 32]).is_err());
    }
}
