//! CIFAR-10 and CIFAR-100 in their binary format.
//!
//! A CIFAR-10 file (`data_batch_1.bin` … `data_batch_5.bin`, `test_batch.bin`) is a sequence of
//! 3073-byte records: the label byte (0–9), then 3072 pixel bytes — the 1024 red values of the
//! 32 × 32 image row by row, then green, then blue (so `[3, 32, 32]`, channels first). A CIFAR-100
//! file (`train.bin`, `test.bin`) has 3074-byte records: the coarse label (0–19), the fine label
//! (0–99), then the pixels. A file whose length is not a whole number of records, or a label
//! out of range, is an error naming the file, the record and its byte offset.

use std::path::{Path, PathBuf};

use kiln_tensor::{DType, Tensor};

use crate::mnist::Split;
use crate::pipeline::Source;
use crate::{Error, Example, Result, TensorDataset};

/// The image side (32).
pub const SIDE: usize = 32;
/// Pixel bytes per image (3 × 32 × 32).
pub const IMAGE_BYTES: usize = 3 * SIDE * SIDE;
/// The CIFAR-10 class names, by label.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];
/// Per-channel mean of the CIFAR-10 training pixels (scaled to `[0, 1]`).
pub const CIFAR10_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// Per-channel standard deviation of the CIFAR-10 training pixels (scaled to `[0, 1]`).
pub const CIFAR10_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];
/// Per-channel mean of the CIFAR-100 training pixels (scaled to `[0, 1]`).
pub const CIFAR100_MEAN: [f32; 3] = [0.5071, 0.4865, 0.4409];
/// Per-channel standard deviation of the CIFAR-100 training pixels (scaled to `[0, 1]`).
pub const CIFAR100_STD: [f32; 3] = [0.2673, 0.2564, 0.2762];

/// Which of the two datasets (they differ in the label bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CifarKind {
    /// CIFAR-10: one label byte (10 classes).
    Cifar10,
    /// CIFAR-100: a coarse (20 superclasses) and a fine (100 classes) label byte.
    Cifar100,
}

impl CifarKind {
    /// Label bytes before each image.
    pub fn label_bytes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 1,
            CifarKind::Cifar100 => 2,
        }
    }

    /// Bytes per record.
    pub fn record_bytes(self) -> usize {
        self.label_bytes() + IMAGE_BYTES
    }

    /// The number of (fine) classes.
    pub fn num_classes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 10,
            CifarKind::Cifar100 => 100,
        }
    }

    /// The files of a split in the extracted archive (`cifar-10-batches-bin/`,
    /// `cifar-100-binary/`).
    pub fn files(self, split: Split) -> Vec<String> {
        match (self, split) {
            (CifarKind::Cifar10, Split::Train) => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            (CifarKind::Cifar10, Split::Test) => vec!["test_batch.bin".into()],
            (CifarKind::Cifar100, Split::Train) => vec!["train.bin".into()],
            (CifarKind::Cifar100, Split::Test) => vec!["test.bin".into()],
        }
    }

    /// The per-channel training mean and standard deviation.
    pub fn mean_std(self) -> ([f32; 3], [f32; 3]) {
        match self {
            CifarKind::Cifar10 => (CIFAR10_MEAN, CIFAR10_STD),
            CifarKind::Cifar100 => (CIFAR100_MEAN, CIFAR100_STD),
        }
    }
}

/// CIFAR images and labels.
#[derive(Clone, Debug)]
pub struct Cifar {
    /// Which dataset.
    pub kind: CifarKind,
    /// The images, `u8` `[N, 3, 32, 32]`.
    pub images: Tensor,
    /// The (fine) labels, `i64` `[N]`.
    pub labels: Tensor,
    /// CIFAR-100's coarse labels, `i64` `[N]`.
    pub coarse_labels: Option<Tensor>,
}

fn format_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Parse the records of one file, appending to `pixels`, `labels` and `coarse`.
fn parse(
    path: &Path,
    bytes: &[u8],
    kind: CifarKind,
    pixels: &mut Vec<u8>,
    labels: &mut Vec<i64>,
    coarse: &mut Vec<i64>,
) -> Result<()> {
    let rec = kind.record_bytes();
    if bytes.is_empty() {
        return Err(format_err(
            path,
            format!("empty file: expected {rec}-byte {kind:?} records"),
        ));
    }
    if !bytes.len().is_multiple_of(rec) {
        let whole = bytes.len() / rec;
        return Err(format_err(
            path,
            format!(
                "truncated: {} bytes is {whole} whole {rec}-byte {kind:?} records and {} bytes of record {whole} (starting at byte {}), which needs {rec}",
                bytes.len(),
                bytes.len() % rec,
                whole * rec
            ),
        ));
    }
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        let (fine, coarse_label) = match kind {
            CifarKind::Cifar10 => (r[0], None),
            CifarKind::Cifar100 => (r[1], Some(r[0])),
        };
        if fine as usize >= kind.num_classes() {
            return Err(format_err(
                path,
                format!(
                    "record {i} (byte {}): label {fine}, but {kind:?} has {} classes (is this a {} file?)",
                    i * rec + kind.label_bytes() - 1,
                    kind.num_classes(),
                    if kind == CifarKind::Cifar10 {
                        "CIFAR-100"
                    } else {
                        "CIFAR-10"
                    }
                ),
            ));
        }
        if let Some(c) = coarse_label {
            if c >= 20 {
                return Err(format_err(
                    path,
                    format!(
                        "record {i} (byte {}): coarse label {c}, but CIFAR-100 has 20 superclasses",
                        i * rec
                    ),
                ));
            }
            coarse.push(i64::from(c));
        }
        labels.push(i64::from(fine));
        pixels.extend_from_slice(&r[kind.label_bytes()..]);
    }
    Ok(())
}

impl Cifar {
    /// Read binary files of `kind` and concatenate them in order.
    pub fn load_files<P: AsRef<Path>>(paths: &[P], kind: CifarKind) -> Result<Cifar> {
        let (mut pixels, mut labels, mut coarse) = (Vec::new(), Vec::new(), Vec::new());
        for p in paths {
            let p = p.as_ref();
            let bytes = std::fs::read(p).map_err(|source| Error::Io {
                path: p.to_path_buf(),
                source,
            })?;
            parse(p, &bytes, kind, &mut pixels, &mut labels, &mut coarse)?;
        }
        let n = labels.len();
        Ok(Cifar {
            kind,
            images: Tensor::from_vec(pixels, [n, 3, SIDE, SIDE])?,
            labels: Tensor::from_vec(labels, [n])?,
            coarse_labels: match kind {
                CifarKind::Cifar10 => None,
                CifarKind::Cifar100 => Some(Tensor::from_vec(coarse, [n])?),
            },
        })
    }

    /// Read a split from the directory of the extracted binary archive (`cifar-10-batches-bin`
    /// or `cifar-100-binary`); see [`CifarKind::files`].
    pub fn load(dir: impl AsRef<Path>, kind: CifarKind, split: Split) -> Result<Cifar> {
        let dir = dir.as_ref();
        let paths: Vec<PathBuf> = kind.files(split).iter().map(|f| dir.join(f)).collect();
        Self::load_files(&paths, kind)
    }

    /// The number of images.
    pub fn len(&self) -> usize {
        self.labels.elem_count()
    }

    /// Whether there is no image.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The images as `f32` `[N, 3, 32, 32]` pixels / 255, with `normalize` standardised per
    /// channel by the training mean and standard deviation ([`CifarKind::mean_std`]), and the
    /// (fine) labels.
    pub fn to_dataset(&self, normalize: bool) -> Result<TensorDataset> {
        let pixels = self.images.to_dtype(DType::U8)?;
        let pixels = pixels.contiguous_slice::<u8>()?;
        let (mean, std) = if normalize {
            self.kind.mean_std()
        } else {
            ([0.0; 3], [1.0; 3])
        };
        let plane = SIDE * SIDE;
        let values: Vec<f32> = pixels
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let c = (i / plane) % 3;
                (p as f32 / 255.0 - mean[c]) / std[c]
            })
            .collect();
        TensorDataset::new(Tensor::from_vec(values, self.images.dims())?, self.labels.clone())
    }
}

/// Element `i`: the `u8` image `[3, 32, 32]` (a view) and its (fine) label as an `i64` scalar.
impl Source<Example> for Cifar {
    fn len(&self) -> usize {
        Cifar::len(self)
    }
    fn get(&self, index: usize) -> Result<Example> {
        if index >= Cifar::len(self) {
            return Err(crate::pipeline::source_out_of_range(
                "CIFAR",
                index,
                Cifar::len(self),
            ));
        }
        Ok(Example::new(
            crate::pipeline::row(&self.images, index)?,
            crate::pipeline::row(&self.labels, index)?,
        ))
    }
    fn name(&self) -> String {
        format!("{:?}", self.kind).to_lowercase()
    }
}
