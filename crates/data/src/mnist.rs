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

/// The file's bytes, gunzipped when they start with the gzip magic `1f 8b`.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(raw.as_slice())
        .read_to_end(&mut out)
        .map_err(|e| {
            format_err(
                path,
                format!(
                    "corrupt or truncated gzip data: {e} (after {} decompressed bytes, reading {} compressed bytes)",
                    out.len(),
                    raw.len()
                ),
            )
        })?;
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
    let bytes = read_maybe_gz(path)?;
    let (dims, data) = parse_idx(path, &bytes, IMAGES_MAGIC, "image")?;
    Ok((data.to_vec(), [dims[0], dims[1], dims[2]]))
}

/// Read an IDX label file (`*-labels-idx1-ubyte[.gz]`): one byte per example.
pub fn load_idx_labels(path: impl AsRef<Path>) -> Result<Vec<u8>> {
    let path = path.as_ref();
    let bytes = read_maybe_gz(path)?;
    let (_, data) = parse_idx(path, &bytes, LABELS_MAGIC, "label")?;
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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A scratch directory unique to this test.
    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kiln-data-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = magic.to_be_bytes().to_vec();
        for d in dims {
            v.extend(d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn message(r: Result<impl std::fmt::Debug>) -> String {
        r.expect_err("expected an error").to_string()
    }

    #[test]
    fn reads_gzip_and_plain_images_and_labels() {
        let d = scratch("ok");
        let pixels: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8 * 10).collect();
        let img = idx(IMAGES_MAGIC, &[2, 3, 4], &pixels);
        std::fs::write(d.join("a.gz"), gz(&img)).unwrap();
        std::fs::write(d.join("a"), &img).unwrap();
        for name in ["a.gz", "a"] {
            let (px, dims) = load_idx_images(d.join(name)).unwrap();
            assert_eq!(dims, [2, 3, 4]);
            assert_eq!(px, pixels);
        }
        std::fs::write(d.join("l.gz"), gz(&idx(LABELS_MAGIC, &[3], &[7, 0, 9]))).unwrap();
        assert_eq!(load_idx_labels(d.join("l.gz")).unwrap(), vec![7, 0, 9]);
    }

    #[test]
    fn loads_a_split_as_tensors() {
        let d = scratch("split");
        let img = idx(IMAGES_MAGIC, &[3, 2, 2], &[0, 255, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        std::fs::write(d.join("t10k-images-idx3-ubyte.gz"), gz(&img)).unwrap();
        // Uncompressed labels are found too.
        std::fs::write(
            d.join("t10k-labels-idx1-ubyte"),
            idx(LABELS_MAGIC, &[3], &[4, 1, 9]),
        )
        .unwrap();
        let m = Mnist::load(&d, Split::Test).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m.images.dims(), &[3, 2, 2]);
        assert_eq!(m.images.dtype(), DType::U8);
        assert_eq!(m.labels.dtype(), DType::I64);
        assert_eq!(m.labels.to_vec::<i64>().unwrap(), vec![4, 1, 9]);
        let f = m.images_f32_flat().unwrap();
        assert_eq!(f.dims(), &[3, 4]);
        assert_eq!(f.to_vec::<f32>().unwrap()[..2], [0.0, 1.0]);
        // The train split is absent: an error naming the file.
        let e = message(Mnist::load(&d, Split::Train));
        assert!(
            e.contains("train-images-idx3-ubyte.gz") && e.contains("not found"),
            "{e}"
        );
    }

    #[test]
    fn count_mismatch_is_an_error() {
        let d = scratch("mismatch");
        let img = idx(IMAGES_MAGIC, &[2, 1, 1], &[1, 2]);
        std::fs::write(d.join("train-images-idx3-ubyte.gz"), gz(&img)).unwrap();
        std::fs::write(
            d.join("train-labels-idx1-ubyte.gz"),
            gz(&idx(LABELS_MAGIC, &[3], &[1, 2, 3])),
        )
        .unwrap();
        let e = message(Mnist::load(&d, Split::Train));
        assert!(e.contains("2 images") && e.contains("3 labels"), "{e}");
    }

    #[test]
    fn bad_files_are_errors_naming_the_file_and_the_problem() {
        let d = scratch("bad");
        let img = idx(IMAGES_MAGIC, &[2, 3, 4], &[0; 24]);
        let lab = idx(LABELS_MAGIC, &[2], &[1, 2]);
        let cases: Vec<(&str, Vec<u8>, bool, &str)> = vec![
            // (file, bytes, read as images?, expected text)
            ("labels-as-images.gz", gz(&lab), true, "IDX label file"),
            ("images-as-labels.gz", gz(&img), false, "IDX image file"),
            ("short-data.gz", gz(&img[..img.len() - 5]), true, "truncated"),
            ("short-header", img[..10].to_vec(), true, "truncated header"),
            ("tiny", vec![0, 0], true, "too short"),
            ("empty", vec![], false, "too short"),
            (
                "trailing.gz",
                gz(&[&img[..], &[1, 2, 3]].concat()),
                true,
                "3 unexpected bytes",
            ),
            (
                "foreign.txt",
                b"hello, world, not an idx file".to_vec(),
                true,
                "not an IDX file",
            ),
            (
                "other-idx",
                idx(0x0000_0D02, &[1, 1], &[0; 4]),
                true,
                "type 0x0d with 2 dimensions",
            ),
        ];
        for (name, bytes, images, want) in cases {
            let p = d.join(name);
            std::fs::write(&p, bytes).unwrap();
            let e = if images {
                message(load_idx_images(&p))
            } else {
                message(load_idx_labels(&p))
            };
            assert!(e.contains(name) && e.contains(want), "{name}: {e}");
        }
        // A gzip stream cut short.
        let full = gz(&img);
        let p = d.join("cut.gz");
        std::fs::write(&p, &full[..full.len() / 2]).unwrap();
        let e = message(load_idx_images(&p));
        assert!(e.contains("cut.gz") && e.contains("gzip"), "{e}");
        // A missing file.
        let e = message(load_idx_labels(d.join("nope.gz")));
        assert!(e.contains("nope.gz"), "{e}");
    }

    #[test]
    fn huge_announced_dimensions_do_not_allocate_or_panic() {
        let d = scratch("huge");
        let p = d.join("huge");
        std::fs::write(&p, idx(IMAGES_MAGIC, &[u32::MAX, u32::MAX, u32::MAX], &[1, 2])).unwrap();
        let e = message(load_idx_images(&p));
        assert!(e.contains("huge"), "{e}");
    }

    /// The real test labels, when the repository's data/ folder is present.
    #[test]
    fn real_mnist_test_labels_if_present() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist/t10k-labels-idx1-ubyte.gz");
        if !p.exists() {
            eprintln!("skipping: {} not present", p.display());
            return;
        }
        let labels = load_idx_labels(&p).unwrap();
        assert_eq!(labels.len(), 10_000);
        assert_eq!(labels[0], 7);
        assert!(labels.iter().all(|&l| l < 10));
        let test = Mnist::load(p.parent().unwrap(), Split::Test).unwrap();
        assert_eq!(test.images.dims(), &[10_000, 28, 28]);
        assert_eq!(test.labels.to_vec::<i64>().unwrap()[..3], [7, 2, 1]);
    }
}
