//! [`ImageFolder`]: a labelled image dataset from a directory tree `root/<class>/**/*.png|jpg`.
//!
//! Classes are the sub-directories of `root`, sorted by name; the label of an image is its
//! class's index. Files are listed at [`ImageFolder::open`] and decoded (PNG and JPEG, through
//! the `image` crate) when an element is read, into a `[C, H, W]` tensor, `u8` or `f32` in
//! `[0, 1]`. A file that does not decode is an error naming it — or, with
//! [`ImageFolderOptions::skip_bad`], every file is decoded once at open and the bad ones are left
//! out and reported ([`ImageFolder::skipped`]).

use std::path::{Path, PathBuf};

use kiln_tensor::{DType, Tensor};
use rayon::prelude::*;

use crate::pipeline::{source_out_of_range, Source};
use crate::{Error, Example, Result};

/// The channels of decoded images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColorMode {
    /// Three channels (grey and palette images are converted).
    Rgb,
    /// One channel (colour images are converted to luma).
    Gray,
    /// Four channels (alpha 255 where the file has none).
    Rgba,
}

impl ColorMode {
    /// The number of channels.
    pub fn channels(self) -> usize {
        match self {
            ColorMode::Rgb => 3,
            ColorMode::Gray => 1,
            ColorMode::Rgba => 4,
        }
    }
}

/// How an [`ImageFolder`] reads its files.
#[derive(Clone, Debug)]
pub struct ImageFolderOptions {
    /// The channels of the decoded images (default RGB).
    pub color: ColorMode,
    /// `U8` (pixels as stored, the default) or `F32` (pixels / 255).
    pub dtype: DType,
    /// Decode every file at open and leave out (and count) those that fail, instead of failing
    /// when a bad one is read (default false).
    pub skip_bad: bool,
    /// The file extensions read, lower case without the dot (default `png`, `jpg`, `jpeg`);
    /// other files are ignored.
    pub extensions: Vec<String>,
}

impl Default for ImageFolderOptions {
    fn default() -> Self {
        ImageFolderOptions {
            color: ColorMode::Rgb,
            dtype: DType::U8,
            skip_bad: false,
            extensions: vec!["png".into(), "jpg".into(), "jpeg".into()],
        }
    }
}

/// A file that was left out, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadFile {
    /// The file.
    pub path: PathBuf,
    /// The decoder's message.
    pub reason: String,
}

/// Images in class sub-folders (see the module docs).
#[derive(Clone, Debug)]
pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<String>,
    samples: Vec<(PathBuf, usize)>,
    options: ImageFolderOptions,
    skipped: Vec<BadFile>,
}

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The entries of `dir`, sorted by name.
fn sorted_entries(dir: &Path) -> Result<Vec<std::fs::DirEntry>> {
    let mut entries = std::fs::read_dir(dir)
        .map_err(|e| io_err(dir, e))?
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| io_err(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    Ok(entries)
}

/// Image files under `dir`, recursively, sorted by path.
fn walk(dir: &Path, extensions: &[String], out: &mut Vec<PathBuf>) -> Result<()> {
    for e in sorted_entries(dir)? {
        let path = e.path();
        let kind = e.file_type().map_err(|err| io_err(&path, err))?;
        let is_dir = kind.is_dir() || (kind.is_symlink() && path.is_dir());
        if is_dir {
            walk(&path, extensions, out)?;
        } else {
            let ext = path
                .extension()
                .map(|x| x.to_string_lossy().to_lowercase())
                .unwrap_or_default();
            if extensions.contains(&ext) {
                out.push(path);
            }
        }
    }
    Ok(())
}

/// Decode `path` into a `[C, H, W]` tensor.
pub fn decode_image(path: &Path, color: ColorMode, dtype: DType) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    let img = image::load_from_memory(&bytes).map_err(|e| Error::Format {
        path: path.to_path_buf(),
        reason: format!("cannot decode the image ({} bytes): {e}", bytes.len()),
    })?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let c = color.channels();
    let hwc: Vec<u8> = match color {
        ColorMode::Rgb => img.into_rgb8().into_raw(),
        ColorMode::Gray => img.into_luma8().into_raw(),
        ColorMode::Rgba => img.into_rgba8().into_raw(),
    };
    let plane = h * w;
    let chw: Vec<u8> = if c == 1 {
        hwc
    } else {
        let mut v = vec![0u8; hwc.len()];
        for (i, px) in hwc.chunks_exact(c).enumerate() {
            for (ch, &p) in px.iter().enumerate() {
                v[ch * plane + i] = p;
            }
        }
        v
    };
    match dtype {
        DType::U8 => Ok(Tensor::from_vec(chw, [c, h, w])?),
        DType::F32 => {
            let v: Vec<f32> = chw.iter().map(|&p| f32::from(p) * (1.0 / 255.0)).collect();
            Ok(Tensor::from_vec(v, [c, h, w])?)
        }
        d => Err(crate::pipeline::invalid(
            "ImageFolder",
            format!("images decode to u8 or f32, not {d}"),
        )),
    }
}

impl ImageFolder {
    /// List `root/<class>/**` with the default options (RGB, `u8`, fail on a bad file).
    pub fn open(root: impl AsRef<Path>) -> Result<ImageFolder> {
        Self::with_options(root, ImageFolderOptions::default())
    }

    /// List `root/<class>/**` with `options`. No class folder, or a class folder without an
    /// image file, is an error naming the folder.
    pub fn with_options(root: impl AsRef<Path>, options: ImageFolderOptions) -> Result<ImageFolder> {
        let root = root.as_ref().to_path_buf();
        if !matches!(options.dtype, DType::U8 | DType::F32) {
            return Err(crate::pipeline::invalid(
                "ImageFolder",
                format!("dtype {}: images decode to u8 or f32", options.dtype),
            ));
        }
        let extensions: Vec<String> = options.extensions.iter().map(|e| e.to_lowercase()).collect();
        let mut classes = Vec::new();
        let mut samples = Vec::new();
        for e in sorted_entries(&root)? {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !path.is_dir() {
                continue;
            }
            let mut files = Vec::new();
            walk(&path, &extensions, &mut files)?;
            if files.is_empty() {
                return Err(Error::Format {
                    path,
                    reason: format!(
                        "class folder without an image file (looked for {})",
                        extensions.join(", ")
                    ),
                });
            }
            let label = classes.len();
            classes.push(name);
            samples.extend(files.into_iter().map(|f| (f, label)));
        }
        if classes.is_empty() {
            return Err(Error::Format {
                path: root,
                reason: "no class sub-folder: expected root/<class>/<image files>".into(),
            });
        }
        let mut skipped = Vec::new();
        if options.skip_bad {
            let bad: Vec<Option<BadFile>> = samples
                .par_iter()
                .map(|(p, _)| {
                    decode_image(p, options.color, DType::U8).err().map(|e| BadFile {
                        path: p.clone(),
                        reason: e.to_string(),
                    })
                })
                .collect();
            let mut kept = Vec::with_capacity(samples.len());
            for (s, b) in samples.into_iter().zip(bad) {
                match b {
                    Some(b) => skipped.push(b),
                    None => kept.push(s),
                }
            }
            samples = kept;
        }
        Ok(ImageFolder {
            root,
            classes,
            samples,
            options: ImageFolderOptions {
                extensions,
                ..options
            },
            skipped,
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The class names, in label order (sorted).
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The number of images.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there is no image.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The file and label of image `index`.
    pub fn sample(&self, index: usize) -> Option<(&Path, usize)> {
        self.samples.get(index).map(|(p, l)| (p.as_path(), *l))
    }

    /// The files left out by [`ImageFolderOptions::skip_bad`], with the reasons.
    pub fn skipped(&self) -> &[BadFile] {
        &self.skipped
    }

    /// The options in use.
    pub fn options(&self) -> &ImageFolderOptions {
        &self.options
    }
}

/// Element `i`: the decoded image `[C, H, W]` and its label as an `i64` scalar.
impl Source<Example> for ImageFolder {
    fn len(&self) -> usize {
        self.samples.len()
    }
    fn get(&self, index: usize) -> Result<Example> {
        let (path, label) = self
            .samples
            .get(index)
            .ok_or_else(|| source_out_of_range("an ImageFolder", index, self.samples.len()))?;
        let image = decode_image(path, self.options.color, self.options.dtype)?;
        Ok(Example::new(image, Tensor::scalar(*label as i64)))
    }
    fn name(&self) -> String {
        format!("image_folder({} classes)", self.classes.len())
    }
}
