//! A PNG of a run's loss and accuracy curves, drawn in a plain RGB raster (lines, axes, ticks and
//! labels in a built-in 5x7 pixel font: no font or graphics library needed) and encoded with the
//! `png` crate.

use std::path::Path;

use crate::metrics::History;
use crate::{Error, Result};

type Rgb = [u8; 3];
type Points = Vec<(f64, f64)>;

const WHITE: Rgb = [255, 255, 255];
const BLACK: Rgb = [0, 0, 0];
const GRID: Rgb = [225, 225, 225];
const TEXT: Rgb = [40, 40, 40];
/// Training series colour.
const TRAIN: Rgb = [31, 119, 180];
/// Validation series colour.
const VAL: Rgb = [255, 127, 14];
/// Colours of a model's own accuracies ([`Metrics::extra`](crate::Metrics::extra)), in turn:
/// green, purple, brown, pink; training drawn in the colour, validation in its darker twin.
const EXTRA: [(Rgb, Rgb); 4] = [
    ([44, 160, 44], [20, 90, 20]),
    ([148, 103, 189], [80, 50, 120]),
    ([140, 86, 75], [80, 45, 35]),
    ([227, 119, 194], [150, 50, 110]),
];

/// 5x7 glyphs, one byte per row (bit 4 = leftmost column). Upper case is drawn as lower case;
/// characters without a glyph are blank.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_lowercase() {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        '+' => [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '/' => [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        '_' => [0, 0, 0, 0, 0, 0, 0x1F],
        'a' => [0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F],
        'b' => [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E],
        'c' => [0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E],
        'd' => [0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F],
        'e' => [0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E],
        'f' => [0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08],
        'g' => [0x00, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x0E],
        'h' => [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11],
        'i' => [0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E],
        'j' => [0x02, 0x00, 0x06, 0x02, 0x02, 0x12, 0x0C],
        'k' => [0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12],
        'l' => [0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'm' => [0x00, 0x00, 0x1A, 0x15, 0x15, 0x11, 0x11],
        'n' => [0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11],
        'o' => [0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E],
        'p' => [0x00, 0x00, 0x1E, 0x11, 0x1E, 0x10, 0x10],
        'q' => [0x00, 0x00, 0x0D, 0x13, 0x0F, 0x01, 0x01],
        'r' => [0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10],
        's' => [0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E],
        't' => [0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06],
        'u' => [0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D],
        'v' => [0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'w' => [0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0A],
        'x' => [0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11],
        'y' => [0x00, 0x00, 0x11, 0x11, 0x0F, 0x01, 0x0E],
        'z' => [0x00, 0x00, 0x1F, 0x02, 0x04, 0x08, 0x1F],
        _ => [0; 7],
    }
}

/// An RGB raster.
struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Canvas {
        Canvas {
            w,
            h,
            px: WHITE.repeat(w * h),
        }
    }

    fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    fn fill_rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: Rgb) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.set(xx, yy, c);
            }
        }
    }

    /// A line of the given thickness (Bresenham with a square brush).
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), thick: i64, c: Rgb) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        let off = thick / 2;
        loop {
            self.fill_rect(x - off, y - off, thick, thick, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Text with its top-left corner at (x, y), `scale` pixels per font pixel.
    fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, c: Rgb) {
        for (i, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            let gx = x + i as i64 * 6 * scale;
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        self.fill_rect(gx + col * scale, y + row as i64 * scale, scale, scale, c);
                    }
                }
            }
        }
    }

    fn text_width(s: &str, scale: i64) -> i64 {
        (s.chars().count() as i64 * 6 - 1).max(0) * scale
    }
}

/// A "nice" tick spacing (1, 2 or 5 times a power of ten) giving about `target` ticks over `span`.
fn nice_step(span: f64, target: f64) -> f64 {
    let raw = (span / target).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm < 1.5 {
        1.0
    } else if norm < 3.0 {
        2.0
    } else if norm < 7.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn tick_label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10()).ceil().clamp(0.0, 6.0) as usize
    };
    // Ticks computed as multiples of the step can land a hair below zero.
    let v = if v.abs() < step * 1e-6 { 0.0 } else { v };
    format!("{v:.decimals$}")
}

/// One named series of (x, y) points.
struct Series<'a> {
    name: &'a str,
    color: Rgb,
    points: Vec<(f64, f64)>,
}

/// Draw one panel (axes, grid, ticks, title, legend, series) into `rect` = (x, y, w, h).
fn panel(cv: &mut Canvas, rect: (i64, i64, i64, i64), title: &str, series: &[Series<'_>]) {
    let (px, py, pw, ph) = rect;
    let (ml, mr, mt, mb) = (62, 16, 34, 40);
    let (x0, y0, w, h) = (px + ml, py + mt, pw - ml - mr, ph - mt - mb);
    cv.text(
        px + (pw - Canvas::text_width(title, 2)) / 2,
        py + 8,
        title,
        2,
        TEXT,
    );

    let pts = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut xmin, mut xmax, mut ymin, mut ymax) =
        (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in pts {
        xmin = xmin.min(x);
        xmax = xmax.max(x);
        ymin = ymin.min(y);
        ymax = ymax.max(y);
    }
    let empty = !xmin.is_finite();
    if empty {
        (xmin, xmax, ymin, ymax) = (0.0, 1.0, 0.0, 1.0);
    }
    if xmax - xmin < 1e-12 {
        xmin -= 1.0;
        xmax += 1.0;
    } else {
        // Room for the markers at both ends.
        let pad = (xmax - xmin) * 0.03;
        xmin -= pad;
        xmax += pad;
    }
    if ymax - ymin < 1e-12 {
        let pad = ymax.abs().max(1.0) * 0.05;
        ymin -= pad;
        ymax += pad;
    } else {
        let pad = (ymax - ymin) * 0.05;
        ymin -= pad;
        ymax += pad;
    }
    let sx = |x: f64| x0 + ((x - xmin) / (xmax - xmin) * w as f64).round() as i64;
    let sy = |y: f64| y0 + h - ((y - ymin) / (ymax - ymin) * h as f64).round() as i64;

    // Grid, ticks and tick labels.
    let ystep = nice_step(ymax - ymin, 5.0);
    let mut v = (ymin / ystep).ceil() * ystep;
    while v <= ymax + 1e-12 {
        let y = sy(v);
        cv.line((x0, y), (x0 + w, y), 1, GRID);
        cv.line((x0 - 4, y), (x0, y), 1, BLACK);
        let label = tick_label(v, ystep);
        cv.text(x0 - 7 - Canvas::text_width(&label, 1), y - 3, &label, 1, TEXT);
        v += ystep;
    }
    let xstep = nice_step(xmax - xmin, 6.0).max(if empty { 0.0 } else { 1.0 });
    let mut v = (xmin / xstep).ceil() * xstep;
    while v <= xmax + 1e-12 {
        let x = sx(v);
        cv.line((x, y0), (x, y0 + h), 1, GRID);
        cv.line((x, y0 + h), (x, y0 + h + 4), 1, BLACK);
        let label = tick_label(v, xstep);
        cv.text(x - Canvas::text_width(&label, 1) / 2, y0 + h + 8, &label, 1, TEXT);
        v += xstep;
    }
    cv.text(
        x0 + (w - Canvas::text_width("step", 1)) / 2,
        y0 + h + 22,
        "step",
        1,
        TEXT,
    );
    // Axes.
    cv.line((x0, y0), (x0, y0 + h), 1, BLACK);
    cv.line((x0, y0 + h), (x0 + w, y0 + h), 1, BLACK);
    if empty {
        cv.text(
            x0 + (w - Canvas::text_width("no data", 2)) / 2,
            y0 + h / 2 - 7,
            "no data",
            2,
            TEXT,
        );
        return;
    }
    // Series: lines between points, and a marker on each point when there are few.
    for s in series {
        let pts: Vec<(i64, i64)> = s
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| (sx(x), sy(y)))
            .collect();
        for pair in pts.windows(2) {
            cv.line(pair[0], pair[1], 2, s.color);
        }
        if pts.len() <= 40 {
            for &(x, y) in &pts {
                cv.fill_rect(x - 3, y - 3, 7, 7, s.color);
            }
        }
    }
    // Legend, in the right-hand corner (top or bottom) with fewer points.
    let entries = series.iter().filter(|s| !s.points.is_empty()).count() as i64;
    let in_corner = |top: bool| {
        series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|&&(x, y)| {
                let (px, py) = (sx(x), sy(y));
                let band = if top { py < y0 + h / 3 } else { py > y0 + 2 * h / 3 };
                px > x0 + w / 2 && band
            })
            .count()
    };
    let mut ly = if in_corner(true) <= in_corner(false) {
        y0 + 8
    } else {
        y0 + h - 8 - 16 * entries
    };
    for s in series.iter().filter(|s| !s.points.is_empty()) {
        let tw = Canvas::text_width(s.name, 1);
        let lx = x0 + w - tw - 36;
        cv.fill_rect(lx - 4, ly - 4, tw + 38, 15, WHITE);
        cv.line((lx, ly + 3), (lx + 20, ly + 3), 3, s.color);
        cv.text(lx + 26, ly, s.name, 1, TEXT);
        ly += 16;
    }
}

/// Draw the loss and accuracy curves of `history` (training at each logged step, else at each
/// epoch; validation at each epoch end, by optimizer step) side by side, and write them as a PNG.
pub fn plot_history(history: &History, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let (train_loss, train_acc): (Points, Points) = if history.steps.is_empty() {
        (
            history
                .epochs
                .iter()
                .map(|e| (e.step as f64, e.train.loss))
                .collect(),
            history
                .epochs
                .iter()
                .filter_map(|e| e.train.accuracy.map(|a| (e.step as f64, a)))
                .collect(),
        )
    } else {
        (
            history.steps.iter().map(|s| (s.step as f64, s.loss)).collect(),
            history
                .steps
                .iter()
                .filter_map(|s| s.accuracy.map(|a| (s.step as f64, a)))
                .collect(),
        )
    };
    let val_loss: Vec<(f64, f64)> = history
        .epochs
        .iter()
        .filter_map(|e| e.val.as_ref().map(|v| (e.step as f64, v.loss)))
        .collect();
    let val_acc: Vec<(f64, f64)> = history
        .epochs
        .iter()
        .filter_map(|e| {
            e.val
                .as_ref()
                .and_then(|v| v.accuracy)
                .map(|a| (e.step as f64, a))
        })
        .collect();

    let extra = extra_accuracies(history);

    let (w, h) = (1000usize, 420usize);
    let mut cv = Canvas::new(w, h);
    let half = (w / 2) as i64;
    panel(
        &mut cv,
        (0, 0, half, h as i64),
        "loss",
        &[
            Series {
                name: "train",
                color: TRAIN,
                points: train_loss,
            },
            Series {
                name: "val",
                color: VAL,
                points: val_loss,
            },
        ],
    );
    let mut acc_series = vec![
        Series {
            name: "train",
            color: TRAIN,
            points: train_acc,
        },
        Series {
            name: "val",
            color: VAL,
            points: val_acc,
        },
    ];
    acc_series.extend(extra.iter().map(|(name, color, points)| Series {
        name,
        color: *color,
        points: points.clone(),
    }));
    panel(&mut cv, (half, 0, half, h as i64), "accuracy", &acc_series);
    write_png(path, w as u32, h as u32, &cv.px)
}

/// The model's own accuracies (extra metrics named `*accuracy`): for each, the training series
/// (logged steps) and the validation series (epoch ends and mid-epoch validations, by step),
/// named as `"train mlm accuracy"`, with their colours. At most four metrics are drawn.
fn extra_accuracies(history: &History) -> Vec<(String, Rgb, Points)> {
    let mut names: Vec<&String> = history
        .steps
        .iter()
        .flat_map(|s| s.extra.keys())
        .chain(
            history
                .epochs
                .iter()
                .filter_map(|e| e.val.as_ref())
                .flat_map(|v| v.extra.keys()),
        )
        .chain(history.validations.iter().flat_map(|v| v.val.extra.keys()))
        .filter(|k| k.ends_with("accuracy"))
        .collect();
    names.sort();
    names.dedup();
    let mut out = Vec::new();
    for (name, (train_color, val_color)) in names.into_iter().zip(EXTRA) {
        let label = name.replace('_', " ");
        let train: Points = history
            .steps
            .iter()
            .filter_map(|s| s.extra.get(name).map(|&a| (s.step as f64, a)))
            .collect();
        let mut val: Points = history
            .epochs
            .iter()
            .filter_map(|e| {
                e.val
                    .as_ref()
                    .and_then(|v| v.extra.get(name))
                    .map(|&a| (e.step as f64, a))
            })
            .chain(
                history
                    .validations
                    .iter()
                    .filter_map(|v| v.val.extra.get(name).map(|&a| (v.step as f64, a))),
            )
            .collect();
        val.sort_by(|a, b| a.0.total_cmp(&b.0));
        val.dedup_by(|a, b| a.0 == b.0);
        out.push((format!("train {label}"), train_color, train));
        out.push((format!("val {label}"), val_color, val));
    }
    out
}

/// Encode RGB pixels as a PNG at `path` (through a temporary file renamed into place).
fn write_png(path: &Path, w: u32, h: u32, rgb: &[u8]) -> Result<()> {
    let tmp = path.with_extension("png.tmp");
    let encode = || -> std::result::Result<(), String> {
        let file = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(|e| e.to_string())?;
        writer.write_image_data(rgb).map_err(|e| e.to_string())?;
        writer.finish().map_err(|e| e.to_string())
    };
    if let Err(reason) = encode() {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, std::io::Error::other(reason)));
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{EpochMetrics, Metrics, StepLog};

    #[test]
    fn ticks_are_nice() {
        assert_eq!(nice_step(1.0, 5.0), 0.2);
        assert_eq!(nice_step(938.0, 6.0), 200.0);
        assert_eq!(tick_label(0.30000000000000004, 0.1), "0.3");
        assert_eq!(tick_label(400.0, 200.0), "400");
        assert_eq!(tick_label(-1e-17, 0.5), "0.0");
    }

    #[test]
    fn draws_a_png_with_curves() {
        let mut h = History::default();
        for i in 1..=20 {
            h.steps.push(StepLog {
                step: i * 10,
                epoch: (i - 1) / 10,
                loss: 2.0 / i as f64,
                accuracy: Some(1.0 - 1.0 / (i as f64 + 1.0)),
                lr: 1e-3,
                samples_per_sec: 1000.0,
                tokens_per_sec: None,
                grad_norm: None,
                extra: [("mlm_accuracy".to_string(), 0.5 - 0.4 / i as f64)].into(),
            });
        }
        for e in 0..2 {
            let m = Metrics {
                loss: 0.5 - 0.1 * e as f64,
                accuracy: Some(0.9 + 0.02 * e as f64),
                top5: None,
                samples: 100,
                extra: [("mlm_accuracy".to_string(), 0.3 + 0.1 * e as f64)].into(),
            };
            h.epochs.push(EpochMetrics {
                epoch: e,
                step: 100 * (e + 1),
                train: m.clone(),
                val: Some(m),
                lr: 1e-3,
                seconds: 1.0,
            });
        }
        let dir = std::env::temp_dir().join(format!("kiln-train-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("curves.png");
        plot_history(&h, &p).unwrap();
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&p).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (1000, 420));
        let count = |c: Rgb| buf.chunks_exact(3).filter(|p| *p == c).count();
        assert!(count(TRAIN) > 500, "the training curves are drawn");
        assert!(count(VAL) > 100, "the validation curves are drawn");
        assert!(
            count(EXTRA[0].0) > 100,
            "the model's own accuracy is drawn (training)"
        );
        assert!(
            count(EXTRA[0].1) > 50,
            "the model's own accuracy is drawn (validation)"
        );
        // The test's files go; the directory is per process.
        let _ = std::fs::remove_dir_all(&dir);
        assert!(count(BLACK) > 1000, "the axes are drawn");
    }

    #[test]
    fn draws_an_empty_history() {
        // An empty history still gives a picture (axes and "no data").
        let dir = std::env::temp_dir().join(format!("kiln-train-plot-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        plot_history(&History::default(), dir.join("empty.png")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
