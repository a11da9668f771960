//! MNIST and Fashion-MNIST: readers for the IDX format (gzip-compressed or not) and [`Mnist`], a
//! split loaded as tensors.
//!
//! An IDX file is a big-endian header — magic `0x00 0x00 <type> <rank>` (type `0x08` = unsigned
//! bytes), then one `u32` per dimension — followed by the data. Images are rank 3 (magic
//! `0x00000803`: count, rows, columns), labels rank 1 (magic `0x00000801`). Every problem with a
//! file (missing, not gzip-decodable, wrong magic, truncated, trailing bytes) is an [`Error`] naming
//! the file and what was wrong; nothing here panics on bad input.

use std::io::Read;
use std::path::{Path, PathBuf};

use kiln_tensor::{DType, Tensor};

use crate::{Error, Result};

/// The Fashion-MNIST class names, by label (the files and format are MNIST's).
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Magic number of an IDX file of unsigned bytes with three dimensions (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned bytes with one dimension (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

fn format_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The largest decompressed IDX file read (1 GiB; MNIST's largest is 47 MB): a gzip stream that
/// inflates past it (a "zip bomb") is refused instead of exhausting memory.
pub const MAX_IDX_BYTES: u64 = 1 << 30;

/// The file's bytes, gunzipped when they start with the gzip magic `1f 8b`.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    gunzip_if_gz(raw, path)
}

/// `raw` gunzipped when it starts with the gzip magic `1f 8b`, else `raw` itself; `origin` names
/// the data in errors.
fn gunzip_if_gz(raw: Vec<u8>, origin: &Path) -> Result<Vec<u8>> {
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(raw.as_slice())
        .take(MAX_IDX_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            format_err(
                origin,
                format!(
                    "corrupt or truncated gzip data: {e} (after {} decompressed bytes, reading {} compressed bytes)",
                    out.len(),
                    raw.len()
                ),
            )
        })?;
    if out.len() as u64 > MAX_IDX_BYTES {
        return Err(format_err(
            origin,
            format!("the gzip data inflates past {MAX_IDX_BYTES} bytes, more than an IDX file of this reader holds"),
        ));
    }
    Ok(out)
}

/// Describe a magic number for error messages.
fn describe_magic(magic: u32) -> String {
    match magic {
        IMAGES_MAGIC => "an IDX image file (magic 0x00000803)".to_string(),
        LABELS_MAGIC => "an IDX label file (magic 0x00000801)".to_string(),
        m if m >> 16 == 0 => format!(
            "an IDX file of type 0x{:02x} with {} dimensions (magic 0x{m:08x})",
            (m >> 8) & 0xff,
            m & 0xff
        ),
        m => format!("not an IDX file (first four bytes 0x{m:08x})"),
    }
}

/// Parse an IDX header of `rank` dimensions with magic `expected`, returning the dimensions and
/// the data that follows it (checked to be exactly as long as the dimensions say).
fn parse_idx<'a>(path: &Path, bytes: &'a [u8], expected: u32, what: &str) -> Result<(Vec<usize>, &'a [u8])> {
    let rank = (expected & 0xff) as usize;
    let header_len = 4 + 4 * rank;
    let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    if bytes.len() < 4 {
        return Err(format_err(
            path,
            format!(
                "too short for an IDX {what} file: {} bytes, the header alone needs {header_len}",
                bytes.len()
            ),
        ));
    }
    let magic = be(0);
    if magic != expected {
        return Err(format_err(
            path,
            format!(
                "expected an IDX {what} file (magic 0x{expected:08x}), found {}",
                describe_magic(magic)
            ),
        ));
    }
    if bytes.len() < header_len {
        return Err(format_err(
            path,
            format!(
                "truncated header: {} bytes, an IDX {what} header needs {header_len}",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = (0..rank).map(|d| be(4 + 4 * d) as usize).collect();
    let data = &bytes[header_len..];
    let expected_len = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    match expected_len {
        Some(n) if n == data.len() => Ok((dims, data)),
        Some(n) if n > data.len() => Err(format_err(
            path,
            format!(
                "truncated: the header announces dimensions {dims:?} ({n} bytes of data, {} bytes in all), but the contents end at byte {} ({} bytes of data)",
                header_len + n,
                header_len + data.len(),
                data.len()
            ),
        )),
        Some(n) => Err(format_err(
            path,
            format!(
                "{} unexpected bytes after the {n} bytes of data the header announces (dimensions {dims:?})",
                data.len() - n
            ),
        )),
        None => Err(format_err(
            path,
            format!("the header announces dimensions {dims:?}, too large to address"),
        )),
    }
}

/// Read an IDX image file (`*-images-idx3-ubyte[.gz]`): the pixels, row-major, and `[count, rows,
/// columns]`.
pub fn load_idx_images(path: impl AsRef<Path>) -> Result<(Vec<u8>, [usize; 3])> {
    let path = path.as_ref();
    decode_idx_images(read_maybe_gz(path)?, path)
}

/// [`load_idx_images`] of a file's contents (gzip-compressed or not); `origin` names it in errors.
pub fn decode_idx_images(bytes: Vec<u8>, origin: &Path) -> Result<(Vec<u8>, [usize; 3])> {
    let bytes = gunzip_if_gz(bytes, origin)?;
    let (dims, data) = parse_idx(origin, &bytes, IMAGES_MAGIC, "image")?;
    Ok((data.to_vec(), [dims[0], dims[1], dims[2]]))
}

/// Read an IDX label file (`*-labels-idx1-ubyte[.gz]`): one byte per example.
pub fn load_idx_labels(path: impl AsRef<Path>) -> Result<Vec<u8>> {
    let path = path.as_ref();
    decode_idx_labels(read_maybe_gz(path)?, path)
}

/// [`load_idx_labels`] of a file's contents (gzip-compressed or not); `origin` names it in errors.
pub fn decode_idx_labels(bytes: Vec<u8>, origin: &Path) -> Result<Vec<u8>> {
    let bytes = gunzip_if_gz(bytes, origin)?;
    let (_, data) = parse_idx(origin, &bytes, LABELS_MAGIC, "label")?;
    Ok(data.to_vec())
}

/// Which half of the dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training set (`train-*`, 60 000 examples).
    Train,
    /// The test set (`t10k-*`, 10 000 examples).
    Test,
}

impl Split {
    /// The file-name prefix: `train` or `t10k`.
    pub fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// One split of MNIST (or Fashion-MNIST, which has the same files and format).
#[derive(Clone, Debug)]
pub struct Mnist {
    /// The images, `u8` `[N, 28, 28]` (`[N, rows, columns]` as the file says).
    pub images: Tensor,
    /// The labels, `i64` `[N]` (class indices, ready for a cross-entropy loss).
    pub labels: Tensor,
}

/// `dir/name.gz` if it exists, else `dir/name` if that exists, else an error naming both.
fn find_file(dir: &Path, name: &str) -> Result<PathBuf> {
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    let raw = dir.join(name);
    if raw.is_file() {
        return Ok(raw);
    }
    Err(Error::Io {
        path: gz,
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("not found (nor the uncompressed {name})"),
        ),
    })
}

impl Mnist {
    /// Load a split from `dir`, which holds the standard files `{train,t10k}-images-idx3-ubyte.gz`
    /// and `{train,t10k}-labels-idx1-ubyte.gz` (or the same names without `.gz`, uncompressed).
    /// Image and label counts must agree.
    pub fn load(dir: impl AsRef<Path>, split: Split) -> Result<Mnist> {
        let dir = dir.as_ref();
        let p = split.prefix();
        let images_path = find_file(dir, &format!("{p}-images-idx3-ubyte"))?;
        let labels_path = find_file(dir, &format!("{p}-labels-idx1-ubyte"))?;
        let (pixels, [n, rows, cols]) = load_idx_images(&images_path)?;
        let labels = load_idx_labels(&labels_path)?;
        if labels.len() != n {
            return Err(Error::Mismatch {
                path: dir.to_path_buf(),
                reason: format!(
                    "{} holds {n} images but {} holds {} labels",
                    images_path.display(),
                    labels_path.display(),
                    labels.len()
                ),
            });
        }
        let labels: Vec<i64> = labels.into_iter().map(i64::from).collect();
        Ok(Mnist {
            images: Tensor::from_vec(pixels, [n, rows, cols])?,
            labels: Tensor::from_vec(labels, [n])?,
        })
    }

    /// The number of examples.
    pub fn len(&self) -> usize {
        self.labels.elem_count()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The images as `f32` in `[0, 1]` (pixels / 255), flattened to `[N, rows * columns]` (the
    /// input of a multi-layer perceptron).
    pub fn images_f32_flat(&self) -> Result<Tensor> {
        let [n, r, c] = [
            self.images.dims()[0],
            self.images.dims()[1],
            self.images.dims()[2],
        ];
        Ok(self
            .images
            .to_dtype(DType::F32)?
            .mul_scalar(1.0 / 255.0)?
            .reshape([n, r * c])?)
    }
}

/// Element `i`: the `u8` image `[1, rows, columns]` (a view, channels first like the other vision
/// sources) and its label as an `i64` scalar.
impl crate::pipeline::Source<crate::Example> for Mnist {
    fn len(&self) -> usize {
        Mnist::len(self)
    }
    fn get(&self, index: usize) -> Result<crate::Example> {
        let n = Mnist::len(self);
        if index >= n || self.images.rank() != 3 {
            return Err(crate::pipeline::source_out_of_range("MNIST", index, n));
        }
        Ok(crate::Example::new(
            self.images.narrow(0, index, 1)?,
            crate::pipeline::row(&self.labels, index)?,
        ))
    }
    fn name(&self) -> String {
        "mnist".to_string()
    }
}
