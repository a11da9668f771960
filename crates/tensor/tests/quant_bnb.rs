//! NF4 (with double quantization) and LLM.int8() weights against plain reference implementations
//! of the bitsandbytes algorithms written here: the same packed codes and scales, the stored
//! size, and products close to the dense ones.

use kiln_tensor::quant::{
    dynamic_map, Int8Matrix, Nf4Matrix, Nf4Scales, QWeight, QuantPath, QuantScheme, DOUBLE_QUANT_BLOCK,
    NF4_BLOCK, NF4_CODEBOOK,
};
use rand::{Rng, SeedableRng};

fn weights(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    // Normal-ish weights (sum of uniforms) with a few large ones, as trained matrices have.
    (0..n)
        .map(|i| {
            let v: f32 = (0..4).map(|_| rng.gen_range(-0.05f32..0.05)).sum();
            if i % 997 == 0 {
                v * 20.0
            } else {
                v
            }
        })
        .collect()
}

/// bitsandbytes `create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)`, literally.
fn reference_dynamic_map() -> Vec<f32> {
    let (max_exponent_bits, non_sign_bits) = (7i32, 7i32);
    let mut data: Vec<f64> = Vec::new();
    for i in 0..max_exponent_bits {
        let fraction_items = 2usize.pow((i + non_sign_bits - max_exponent_bits) as u32) + 1;
        let boundaries: Vec<f64> = (0..fraction_items)
            .map(|k| 0.1 + (1.0 - 0.1) * k as f64 / (fraction_items - 1) as f64)
            .collect();
        let means: Vec<f64> = boundaries.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
        let scale = 10f64.powi(-(max_exponent_bits - 1) + i);
        data.extend(means.iter().map(|m| scale * m));
        data.extend(means.iter().map(|m| -scale * m));
    }
    data.push(0.0);
    data.push(1.0);
    assert_eq!(data.len(), 256);
    data.sort_by(f64::total_cmp);
    data.into_iter().map(|v| v as f32).collect()
}

/// The index of the nearest entry (the first on a tie).
fn argmin(code: &[f32], x: f32) -> u8 {
    let mut best = 0;
    for (i, &c) in code.iter().enumerate() {
        if (x - c).abs() < (x - code[best]).abs() {
            best = i;
        }
    }
    best as u8
}

/// Double-quantized block maxima: codes, maxima per 256, offset.
type DoubleQuant = (Vec<u8>, Vec<f32>, f32);

/// bitsandbytes `quantize_4bit(quant_type="nf4", blocksize=64, compress_statistics=dq)`:
/// packed codes, and the block maxima (or their double quantization: codes, maxima, offset).
fn reference_nf4(w: &[f32], dq: bool) -> (Vec<u8>, Vec<f32>, Option<DoubleQuant>) {
    let absmax: Vec<f32> = w
        .chunks(64)
        .map(|b| b.iter().fold(0f32, |m, v| m.max(v.abs())))
        .collect();
    let mut q = Vec::with_capacity(w.len());
    for (b, block) in w.chunks(64).enumerate() {
        for &v in block {
            q.push(argmin(&NF4_CODEBOOK, v * (1.0 / absmax[b])));
        }
    }
    if q.len() % 2 == 1 {
        q.push(0);
    }
    let packed = q.chunks(2).map(|p| (p[0] << 4) | p[1]).collect();
    let double = dq.then(|| {
        let offset = (absmax.iter().map(|&a| a as f64).sum::<f64>() / absmax.len() as f64) as f32;
        let map = reference_dynamic_map();
        let centred: Vec<f32> = absmax.iter().map(|a| a - offset).collect();
        let mut codes = Vec::new();
        let mut maxima = Vec::new();
        for block in centred.chunks(256) {
            let m = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            codes.extend(block.iter().map(|&v| argmin(&map, v * (1.0 / m))));
            maxima.push(m);
        }
        (codes, maxima, offset)
    });
    (packed, absmax, double)
}

#[test]
fn the_dynamic_map_is_bitsandbytes_signed_map() {
    let map = dynamic_map();
    assert_eq!(map.to_vec(), reference_dynamic_map());
    assert_eq!((map[0], map[255]), (-0.99296875, 1.0));
    assert!(map.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn nf4_codes_and_scales_equal_the_reference() {
    let (rows, cols) = (96, 200); // 19200 weights: 300 blocks of 64, 2 blocks of maxima
    let w = weights(rows * cols, 1);
    for dq in [false, true] {
        let q = Nf4Matrix::quantize(&w, rows, cols, dq).unwrap();
        let (packed, absmax, double) = reference_nf4(&w, dq);
        assert_eq!(q.codes(), &packed[..], "dq {dq}");
        match (q.scales(), double) {
            (Nf4Scales::F32(s), None) => assert_eq!(s, &absmax),
            (
                Nf4Scales::Double {
                    codes,
                    maxima,
                    offset,
                },
                Some((rc, rm, ro)),
            ) => {
                assert_eq!(codes, &rc);
                assert_eq!(maxima, &rm);
                assert_eq!(*offset, ro);
            }
            _ => panic!("scales of the wrong kind (dq {dq})"),
        }
        // Each weight within half the widest NormalFloat gap of its block maximum (plus the
        // double quantization's error on that maximum).
        let deq = q.dequantize();
        for (b, (x, y)) in w.chunks(NF4_BLOCK).zip(deq.chunks(NF4_BLOCK)).enumerate() {
            let slack = if dq { 0.02 } else { 0.0 };
            for (a, c) in x.iter().zip(y) {
                assert!((a - c).abs() <= absmax[b] * (0.152 + slack) + 1e-7, "{a} vs {c}");
            }
        }
    }
}

#[test]
fn nf4_with_double_quantization_stores_at_most_4_13_bits_per_weight() {
    let (rows, cols) = (576, 1536);
    let w = weights(rows * cols, 2);
    let dq = Nf4Matrix::quantize(&w, rows, cols, true).unwrap();
    let plain = Nf4Matrix::quantize(&w, rows, cols, false).unwrap();
    assert!(dq.bits_per_weight() <= 4.13, "{}", dq.bits_per_weight());
    assert!((plain.bits_per_weight() - 4.5).abs() < 1e-9);
    assert_eq!(DOUBLE_QUANT_BLOCK, 256);
}

#[test]
fn int8_codes_equal_the_reference_and_outliers_go_through_f32() {
    let (rows, cols, m) = (40, 128, 3);
    let w = weights(rows * cols, 3);
    let q = Int8Matrix::quantize(&w, rows, cols, None).unwrap();
    for (r, row) in w.chunks(cols).enumerate() {
        let scb = row.iter().fold(0f32, |a, v| a.max(v.abs()));
        assert_eq!(q.row_absmax()[r], scb);
        let want: Vec<i8> = row.iter().map(|&v| (v * (127.0 / scb)).round() as i8).collect();
        assert_eq!(&q.codes()[r * cols..(r + 1) * cols], &want[..]);
    }
    // Activations with one outlier feature (as LLM.int8() found in large models).
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    let mut x: Vec<f32> = (0..m * cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    for i in 0..m {
        x[i * cols + 17] = 60.0;
    }
    // Against the product with the dequantized weights, so only the activations' rounding
    // counts: without the split, the outlier sets the row's scale and the other features lose
    // their precision.
    let mut wq = vec![0f32; rows * cols];
    for (r, row) in wq.chunks_exact_mut(cols).enumerate() {
        q.dequantize_row(r, row);
    }
    let exact: Vec<f64> = (0..m * rows)
        .map(|o| {
            let (i, r) = (o / rows, o % rows);
            (0..cols)
                .map(|c| x[i * cols + c] as f64 * wq[r * cols + c] as f64)
                .sum()
        })
        .collect();
    let err = |q: &Int8Matrix| {
        let mut out = vec![0f32; m * rows];
        q.matmul(&x, m, &mut out).unwrap();
        out.iter()
            .zip(&exact)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max)
    };
    let with = Int8Matrix::quantize(&w, rows, cols, Some(6.0)).unwrap();
    let (plain_err, split_err) = (err(&q), err(&with));
    assert!(
        split_err < plain_err / 10.0,
        "outlier split {split_err} vs plain {plain_err}"
    );
}

#[test]
fn every_scheme_multiplies_like_its_dequantized_matrix() {
    let (rows, cols, m) = (24, 192, 4);
    let w = weights(rows * cols, 5);
    let x: Vec<f32> = (0..m * cols)
        .map(|i| ((i * 31 % 17) as f32 - 8.0) / 8.0)
        .collect();
    for s in ["nf4", "nf4-dq", "int8", "int8-outliers"] {
        let q: QWeight = QuantScheme::parse(s).unwrap().quantize(&w, rows, cols).unwrap();
        let deq = q.dequantize().unwrap();
        let mut out = vec![0f32; m * rows];
        q.matmul(&x, m, QuantPath::Int8Activations, &mut out).unwrap();
        for i in 0..m {
            for r in 0..rows {
                let want: f32 = (0..cols).map(|c| x[i * cols + c] * deq[r * cols + c]).sum();
                // int8 also rounds the activations; NF4 multiplies the dequantized rows exactly.
                let tol = if s.starts_with("int8") { 0.02 } else { 1e-4 };
                assert!(
                    (out[i * rows + r] - want).abs() <= tol,
                    "{s}: {} vs {want}",
                    out[i * rows + r]
                );
            }
        }
    }
    assert!(QuantScheme::parse("nf5").is_err());
    assert!(Nf4Matrix::quantize(&[f32::NAN; 64], 1, 64, false).is_err());
    assert!(Int8Matrix::quantize(&[0.0; 6], 2, 4, None).is_err());
}

#[test]
fn nf4_ranges_dequantize_like_the_whole_matrix_from_any_start() {
    // 3 × 45: rows start at odd elements and cross block boundaries.
    let w = weights(135, 6);
    let q = Nf4Matrix::quantize(&w, 3, 45, false).unwrap();
    let Nf4Scales::F32(absmax) = q.scales() else {
        panic!("plain NF4 keeps f32 maxima")
    };
    // The definition, element by element: codebook value of the code times its block maximum.
    let all: Vec<f32> = (0..135)
        .map(|e| {
            let byte = q.codes()[e / 2];
            let code = if e % 2 == 0 { byte >> 4 } else { byte & 0xF };
            NF4_CODEBOOK[code as usize] * absmax[e / NF4_BLOCK]
        })
        .collect();
    assert_eq!(q.dequantize(), all);
    for start in [0usize, 1, 44, 45, 63, 64, 90, 133] {
        for len in [0usize, 1, 2, 3, 45, 135 - start] {
            if start + len > 135 {
                continue;
            }
            let mut part = vec![0f32; len];
            q.dequantize_range(start, &mut part);
            assert_eq!(part, all[start..start + len], "start {start} len {len}");
        }
    }
}
