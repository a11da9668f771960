//! Image transforms, deterministic or seeded, for [`Pipeline::map_seeded`](crate::Pipeline::map_seeded).
//!
//! Images are `[C, H, W]` tensors (channels first), `u8` or `f32` unless stated. A random
//! transform draws from the generator it is given, which `map_seeded` derives from
//! `(seed, epoch, element index)`, so augmentation does not depend on the number of workers.
//!
//! ```
//! use kiln_data::vision::transforms::{Compose, Normalize, RandomCrop, RandomHorizontalFlip, ToTensor, Transform};
//! use kiln_tensor::{Tensor, TensorRng};
//! let t = Compose::new()
//!     .then(RandomCrop::new((4, 4), 1))
//!     .then(RandomHorizontalFlip::new(0.5)?)
//!     .then(ToTensor::chw())
//!     .then(Normalize::new(vec![0.5], vec![0.25])?);
//! let image = Tensor::from_vec(vec![255u8; 16], [1, 4, 4])?;
//! let out = t.apply(image, &mut TensorRng::new(0))?;
//! assert_eq!(out.dims(), &[1, 4, 4]);
//! assert!(out.to_vec::<f32>()?.iter().all(|&v| v == 2.0 || v == -2.0)); // 255 -> 2, pad 0 -> -2
//! # Ok::<(), kiln_data::Error>(())
//! ```

use std::sync::Arc;

use kiln_tensor::{DType, Tensor, TensorRng};

use crate::pipeline::invalid;
use crate::{Example, Result};

/// An image transform.
pub trait Transform: Send + Sync {
    /// Transform `image`, drawing any randomness from `rng`.
    fn apply(&self, image: Tensor, rng: &mut TensorRng) -> Result<Tensor>;

    /// Transform an example's input, keeping its target.
    fn apply_example(&self, example: Example, rng: &mut TensorRng) -> Result<Example> {
        example.map_input(|x| self.apply(x, rng))
    }
}

impl<T: Transform + ?Sized> Transform for Arc<T> {
    fn apply(&self, image: Tensor, rng: &mut TensorRng) -> Result<Tensor> {
        (**self).apply(image, rng)
    }
}

/// Transforms applied one after the other (sharing the element's generator).
#[derive(Clone, Default)]
pub struct Compose {
    steps: Vec<Arc<dyn Transform>>,
}

impl Compose {
    /// No transform yet (the identity).
    pub fn new() -> Compose {
        Compose::default()
    }

    /// Append a transform.
    pub fn then(mut self, t: impl Transform + 'static) -> Compose {
        self.steps.push(Arc::new(t));
        self
    }

    /// The number of transforms.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether there is no transform.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

impl Transform for Compose {
    fn apply(&self, mut image: Tensor, rng: &mut TensorRng) -> Result<Tensor> {
        for t in &self.steps {
            image = t.apply(image, rng)?;
        }
        Ok(image)
    }
}

/// `[C, H, W]` dimensions of an image (a `[H, W]` image counts as one channel).
fn chw(op: &'static str, image: &Tensor) -> Result<[usize; 3]> {
    match *image.dims() {
        [h, w] => Ok([1, h, w]),
        [c, h, w] => Ok([c, h, w]),
        ref d => Err(invalid(
            op,
            format!("expected an image [C, H, W] or [H, W], got shape {d:?}"),
        )),
    }
}

/// Where the channels are in a `u8` image given to [`ToTensor`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelOrder {
    /// `[C, H, W]` (or `[H, W]`).
    Chw,
    /// `[H, W, C]`, as image files decode.
    Hwc,
}

/// `u8` pixels → `f32` in `[0, 1]` (pixel / 255), channels first (`[C, H, W]`). An `f32` input
/// in `[C, H, W]` order passes through unchanged.
#[derive(Clone, Copy, Debug)]
pub struct ToTensor {
    order: ChannelOrder,
}

impl ToTensor {
    /// For `[C, H, W]` (or `[H, W]`) input.
    pub fn chw() -> ToTensor {
        ToTensor {
            order: ChannelOrder::Chw,
        }
    }

    /// For `[H, W, C]` input.
    pub fn hwc() -> ToTensor {
        ToTensor {
            order: ChannelOrder::Hwc,
        }
    }
}

impl Transform for ToTensor {
    fn apply(&self, image: Tensor, _rng: &mut TensorRng) -> Result<Tensor> {
        const OP: &str = "ToTensor";
        let dims = image.dims().to_vec();
        let [c, h, w] = match (self.order, dims.as_slice()) {
            (ChannelOrder::Hwc, &[h, w, c]) => [c, h, w],
            (ChannelOrder::Hwc, d) => {
                return Err(invalid(
                    OP,
                    format!("expected an image [H, W, C], got shape {d:?}"),
                ))
            }
            (ChannelOrder::Chw, _) => chw(OP, &image)?,
        };
        match image.dtype() {
            DType::U8 => {
                let px = image.contiguous_slice::<u8>()?;
                let out = match self.order {
                    ChannelOrder::Chw => px.iter().map(|&p| f32::from(p) * (1.0 / 255.0)).collect(),
                    ChannelOrder::Hwc => {
                        let mut out = vec![0f32; px.len()];
                        for (i, &p) in px.iter().enumerate() {
                            let (pixel, ch) = (i / c, i % c);
                            out[ch * h * w + pixel] = f32::from(p) * (1.0 / 255.0);
                        }
                        out
                    }
                };
                Ok(Tensor::from_vec::<f32>(out, [c, h, w])?)
            }
            DType::F32 if self.order == ChannelOrder::Chw => Ok(image.reshape([c, h, w])?),
            DType::F32 => Ok(image.permute(&[2, 0, 1])?.contiguous()?),
            d => Err(invalid(OP, format!("expected u8 or f32 pixels, got {d}"))),
        }
    }
}

/// `(x - mean[c]) / std[c]` per channel of an `f32` `[C, H, W]` image. One mean and std apply
/// to every channel.
#[derive(Clone, Debug)]
pub struct Normalize {
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl Normalize {
    /// Per-channel means and standard deviations (same length, every std > 0 and finite).
    pub fn new(mean: Vec<f32>, std: Vec<f32>) -> Result<Normalize> {
        if mean.is_empty() || mean.len() != std.len() {
            return Err(invalid(
                "Normalize",
                format!(
                    "{} means and {} stds: need the same non-zero number",
                    mean.len(),
                    std.len()
                ),
            ));
        }
        if let Some(s) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(invalid(
                "Normalize",
                format!("std {s}: every std must be finite and > 0"),
            ));
        }
        Ok(Normalize { mean, std })
    }
}

impl Transform for Normalize {
    fn apply(&self, image: Tensor, _rng: &mut TensorRng) -> Result<Tensor> {
        let [c, h, w] = chw("Normalize", &image)?;
        if image.dtype() != DType::F32 {
            return Err(invalid(
                "Normalize",
                format!(
                    "expected f32 pixels (apply ToTensor first), got {}",
                    image.dtype()
                ),
            ));
        }
        if self.mean.len() != 1 && self.mean.len() != c {
            return Err(invalid(
                "Normalize",
                format!("{} means for an image of {c} channels", self.mean.len()),
            ));
        }
        let src = image.contiguous_slice::<f32>()?;
        let mut v = Vec::with_capacity(src.len());
        for (ch, plane) in src.chunks(h * w).enumerate().take(c) {
            let k = if self.mean.len() == 1 { 0 } else { ch };
            let (m, inv) = (self.mean[k], 1.0 / self.std[k]);
            v.extend(plane.iter().map(|&x| (x - m) * inv));
        }
        Ok(Tensor::from_vec(v, image.dims())?)
    }
}

/// Apply `f(out_row, out_col) -> Option<(in_row, in_col)>` (None: the fill value) to every
/// channel of a `u8` or `f32` image.
fn remap(
    op: &'static str,
    image: &Tensor,
    out_hw: (usize, usize),
    f: impl Fn(usize, usize) -> Option<(usize, usize)>,
) -> Result<Tensor> {
    let [c, h, w] = chw(op, image)?;
    let (oh, ow) = out_hw;
    let mut out_dims = image.dims().to_vec();
    let r = out_dims.len();
    out_dims[r - 2] = oh;
    out_dims[r - 1] = ow;
    fn go<T: kiln_tensor::WithDType>(
        src: &[T],
        c: usize,
        (h, w): (usize, usize),
        (oh, ow): (usize, usize),
        f: &impl Fn(usize, usize) -> Option<(usize, usize)>,
    ) -> Vec<T> {
        let mut out = vec![T::ZERO; c * oh * ow];
        for ch in 0..c {
            for y in 0..oh {
                for x in 0..ow {
                    if let Some((sy, sx)) = f(y, x) {
                        out[(ch * oh + y) * ow + x] = src[(ch * h + sy) * w + sx];
                    }
                }
            }
        }
        out
    }
    match image.dtype() {
        DType::U8 => {
            let v = go(&image.contiguous_slice::<u8>()?, c, (h, w), out_hw, &f);
            Ok(Tensor::from_vec(v, out_dims)?)
        }
        DType::F32 => {
            let v = go(&image.contiguous_slice::<f32>()?, c, (h, w), out_hw, &f);
            Ok(Tensor::from_vec(v, out_dims)?)
        }
        d => Err(invalid(op, format!("expected u8 or f32 pixels, got {d}"))),
    }
}

/// Pad every side by `padding` zeros, then crop a `size` window at a random position (drawn
/// uniformly; torchvision's `RandomCrop(size, padding)`).
#[derive(Clone, Copy, Debug)]
pub struct RandomCrop {
    size: (usize, usize),
    padding: usize,
}

impl RandomCrop {
    /// A crop of `size = (height, width)` after padding by `padding` on every side.
    pub fn new(size: (usize, usize), padding: usize) -> RandomCrop {
        RandomCrop { size, padding }
    }
}

impl Transform for RandomCrop {
    fn apply(&self, image: Tensor, rng: &mut TensorRng) -> Result<Tensor> {
        let [_, h, w] = chw("RandomCrop", &image)?;
        let (ch, cw) = self.size;
        let p = self.padding;
        if ch == 0 || cw == 0 || ch > h + 2 * p || cw > w + 2 * p {
            return Err(invalid(
                "RandomCrop",
                format!(
                    "crop {ch}x{cw} of a {h}x{w} image padded by {p}: need 1..={}x1..={}",
                    h + 2 * p,
                    w + 2 * p
                ),
            ));
        }
        let top = rng.next_below((h + 2 * p - ch + 1) as u64) as usize;
        let left = rng.next_below((w + 2 * p - cw + 1) as u64) as usize;
        remap("RandomCrop", &image, (ch, cw), |y, x| {
            // Coordinates in the padded image, back to the original.
            let (py, px) = (y + top, x + left);
            let inside = py >= p && py < p + h && px >= p && px < p + w;
            inside.then(|| (py - p, px - p))
        })
    }
}

/// Mirror left-right with probability `p`.
#[derive(Clone, Copy, Debug)]
pub struct RandomHorizontalFlip {
    p: f64,
}

impl RandomHorizontalFlip {
    /// Flip with probability `p` in `[0, 1]`.
    pub fn new(p: f64) -> Result<RandomHorizontalFlip> {
        if !(0.0..=1.0).contains(&p) {
            return Err(invalid(
                "RandomHorizontalFlip",
                format!("probability {p}: need 0 <= p <= 1"),
            ));
        }
        Ok(RandomHorizontalFlip { p })
    }
}

impl Transform for RandomHorizontalFlip {
    fn apply(&self, image: Tensor, rng: &mut TensorRng) -> Result<Tensor> {
        let [_, h, w] = chw("RandomHorizontalFlip", &image)?;
        if rng.next_f64() >= self.p {
            return Ok(image);
        }
        remap("RandomHorizontalFlip", &image, (h, w), |y, x| {
            Some((y, w - 1 - x))
        })
    }
}

/// Bilinear resize to `(height, width)` with half-pixel centres (PyTorch's
/// `interpolate(mode="bilinear", align_corners=False)`, no antialiasing). `u8` results are
/// rounded.
#[derive(Clone, Copy, Debug)]
pub struct Resize {
    size: (usize, usize),
}

impl Resize {
    /// Resize to `(height, width)`, both > 0.
    pub fn new(height: usize, width: usize) -> Result<Resize> {
        if height == 0 || width == 0 {
            return Err(invalid(
                "Resize",
                format!("size {height}x{width}: both must be > 0"),
            ));
        }
        Ok(Resize {
            size: (height, width),
        })
    }
}

/// For each output coordinate: the two source coordinates and the weight of the second.
fn taps(out: usize, input: usize) -> Vec<(usize, usize, f32)> {
    let scale = input as f64 / out as f64;
    (0..out)
        .map(|o| {
            let s = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (s.floor() as usize).min(input - 1);
            let i1 = (i0 + 1).min(input - 1);
            (i0, i1, (s - i0 as f64) as f32)
        })
        .collect()
}

impl Transform for Resize {
    fn apply(&self, image: Tensor, _rng: &mut TensorRng) -> Result<Tensor> {
        let [c, h, w] = chw("Resize", &image)?;
        let (oh, ow) = self.size;
        if h == 0 || w == 0 {
            return Err(invalid("Resize", format!("cannot resize an empty {h}x{w} image")));
        }
        let (ty, tx) = (taps(oh, h), taps(ow, w));
        let src: Vec<f32> = match image.dtype() {
            DType::U8 => image
                .contiguous_slice::<u8>()?
                .iter()
                .map(|&p| f32::from(p))
                .collect(),
            DType::F32 => image.contiguous_slice::<f32>()?.into_owned(),
            d => return Err(invalid("Resize", format!("expected u8 or f32 pixels, got {d}"))),
        };
        let mut out = vec![0f32; c * oh * ow];
        for ch in 0..c {
            let plane = &src[ch * h * w..(ch + 1) * h * w];
            for (y, &(y0, y1, fy)) in ty.iter().enumerate() {
                for (x, &(x0, x1, fx)) in tx.iter().enumerate() {
                    let top = plane[y0 * w + x0] * (1.0 - fx) + plane[y0 * w + x1] * fx;
                    let bottom = plane[y1 * w + x0] * (1.0 - fx) + plane[y1 * w + x1] * fx;
                    out[(ch * oh + y) * ow + x] = top * (1.0 - fy) + bottom * fy;
                }
            }
        }
        let mut dims = image.dims().to_vec();
        let r = dims.len();
        dims[r - 2] = oh;
        dims[r - 1] = ow;
        match image.dtype() {
            DType::U8 => {
                let v: Vec<u8> = out.iter().map(|&x| x.round().clamp(0.0, 255.0) as u8).collect();
                Ok(Tensor::from_vec(v, dims)?)
            }
            _ => Ok(Tensor::from_vec(out, dims)?),
        }
    }
}

/// A transform from a closure (for anything not built in).
pub struct FnTransform<F>(pub F);

impl<F> Transform for FnTransform<F>
where
    F: Fn(Tensor, &mut TensorRng) -> Result<Tensor> + Send + Sync,
{
    fn apply(&self, image: Tensor, rng: &mut TensorRng) -> Result<Tensor> {
        (self.0)(image, rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(v: Vec<f32>, dims: &[usize]) -> Tensor {
        Tensor::from_vec(v, dims).unwrap()
    }

    #[test]
    fn to_tensor_scales_and_reorders_hwc() {
        let mut rng = TensorRng::new(0);
        // [H=1, W=2, C=3]
        let hwc = Tensor::from_vec(vec![0u8, 51, 102, 153, 204, 255], [1, 2, 3]).unwrap();
        let t = ToTensor::hwc().apply(hwc, &mut rng).unwrap();
        assert_eq!(t.dims(), &[3, 1, 2]);
        let v = t.to_vec::<f32>().unwrap();
        let want = [0.0, 0.6, 0.2, 0.8, 0.4, 1.0];
        assert!(v.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{v:?}");
        let gray = Tensor::from_vec(vec![255u8, 0], [1, 2]).unwrap();
        assert_eq!(
            ToTensor::chw()
                .apply(gray, &mut rng)
                .unwrap()
                .to_vec::<f32>()
                .unwrap(),
            vec![1.0, 0.0]
        );
    }

    #[test]
    fn normalize_per_channel_and_errors() {
        let mut rng = TensorRng::new(0);
        let x = img(vec![1.0, 2.0, 3.0, 4.0], &[2, 1, 2]);
        let n = Normalize::new(vec![1.0, 2.0], vec![0.5, 2.0]).unwrap();
        assert_eq!(
            n.apply(x.clone(), &mut rng).unwrap().to_vec::<f32>().unwrap(),
            vec![0.0, 2.0, 0.5, 1.0]
        );
        assert!(Normalize::new(vec![0.0], vec![0.0]).is_err());
        assert!(Normalize::new(vec![0.0, 1.0], vec![1.0]).is_err());
        let three = Normalize::new(vec![0.0; 3], vec![1.0; 3]).unwrap();
        let e = three.apply(x, &mut rng).unwrap_err().to_string();
        assert!(e.contains("3 means") && e.contains("2 channels"), "{e}");
        let e = n
            .apply(Tensor::from_vec(vec![1u8; 4], [2, 1, 2]).unwrap(), &mut rng)
            .unwrap_err()
            .to_string();
        assert!(e.contains("f32"), "{e}");
    }

    #[test]
    fn crop_windows_are_uniform_and_padded_with_zeros() {
        // A 2x2 image padded by 1 (4x4) cropped to 2x2: 9 positions, all reached, content exact.
        let x = img(vec![1.0, 2.0, 3.0, 4.0], &[1, 2, 2]);
        let crop = RandomCrop::new((2, 2), 1);
        let mut seen = std::collections::HashMap::new();
        for s in 0..900 {
            let out = crop
                .apply(x.clone(), &mut TensorRng::new(s))
                .unwrap()
                .to_vec::<f32>()
                .unwrap();
            *seen.entry(format!("{out:?}")).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 9, "{seen:?}");
        assert!(seen.values().all(|&n| (60..=140).contains(&n)), "{seen:?}");
        assert!(seen.contains_key("[0.0, 0.0, 0.0, 1.0]")); // top-left window
        assert!(seen.contains_key("[1.0, 2.0, 3.0, 4.0]")); // centred window
        assert!(seen.contains_key("[4.0, 0.0, 0.0, 0.0]")); // bottom-right window
        let e = RandomCrop::new((5, 5), 1)
            .apply(x, &mut TensorRng::new(0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("crop 5x5"), "{e}");
    }

    #[test]
    fn flip_mirrors_with_the_given_probability() {
        let x = Tensor::from_vec(vec![1u8, 2, 3, 4, 5, 6], [1, 2, 3]).unwrap();
        let always = RandomHorizontalFlip::new(1.0).unwrap();
        let out = always.apply(x.clone(), &mut TensorRng::new(0)).unwrap();
        assert_eq!(out.to_vec::<u8>().unwrap(), vec![3, 2, 1, 6, 5, 4]);
        let half = RandomHorizontalFlip::new(0.5).unwrap();
        let flips = (0..2000)
            .filter(|&s| {
                half.apply(x.clone(), &mut TensorRng::new(s))
                    .unwrap()
                    .to_vec::<u8>()
                    .unwrap()[0]
                    == 3
            })
            .count();
        assert!((900..1100).contains(&flips), "{flips}");
        assert!(RandomHorizontalFlip::new(1.5).is_err());
    }

    #[test]
    fn resize_matches_half_pixel_bilinear() {
        let mut rng = TensorRng::new(0);
        // Downscaling by 2 averages 2x2 blocks.
        let x = img((0..16).map(|i| i as f32).collect(), &[1, 4, 4]);
        let r = Resize::new(2, 2).unwrap().apply(x.clone(), &mut rng).unwrap();
        assert_eq!(r.to_vec::<f32>().unwrap(), vec![2.5, 4.5, 10.5, 12.5]);
        // Upscaling a ramp [0, 1] to 4: torch gives [0, 0.25, 0.75, 1].
        let ramp = img(vec![0.0, 1.0], &[1, 1, 2]);
        let up = Resize::new(1, 4).unwrap().apply(ramp, &mut rng).unwrap();
        assert_eq!(up.to_vec::<f32>().unwrap(), vec![0.0, 0.25, 0.75, 1.0]);
        // Same size is the identity; u8 rounds.
        assert_eq!(
            Resize::new(4, 4)
                .unwrap()
                .apply(x.clone(), &mut rng)
                .unwrap()
                .to_vec::<f32>()
                .unwrap(),
            x.to_vec::<f32>().unwrap()
        );
        let b = Tensor::from_vec(vec![0u8, 255], [1, 1, 2]).unwrap();
        let up = Resize::new(1, 4).unwrap().apply(b, &mut rng).unwrap();
        assert_eq!(up.to_vec::<u8>().unwrap(), vec![0, 64, 191, 255]);
        assert!(Resize::new(0, 3).is_err());
    }

    #[test]
    fn compose_runs_in_order_and_is_deterministic_per_seed() {
        let t = Compose::new()
            .then(RandomCrop::new((3, 3), 2))
            .then(RandomHorizontalFlip::new(0.5).unwrap())
            .then(ToTensor::chw());
        assert_eq!(t.len(), 3);
        let x = Tensor::from_vec((0..27u8).collect::<Vec<_>>(), [3, 3, 3]).unwrap();
        let a = t
            .apply(x.clone(), &mut TensorRng::new(5))
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        let b = t
            .apply(x, &mut TensorRng::new(5))
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 27);
    }
}
