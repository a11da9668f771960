//! kiln's dequantization matches gguf-py bit for bit on seeded random blocks of every format,
//! both called directly and through a GGUF file. The fixture comes from
//! `tests/fixtures/make_quant_fixture.py`.

mod common;

use std::sync::Arc;

use kiln_gguf::{GgmlType, GgufFile, QuantFormat};

struct Case {
    format: QuantFormat,
    bytes: Vec<u8>,
    bits: Vec<u32>,
}

fn cases() -> Vec<Case> {
    let text = include_str!("fixtures/quant_blocks.json");
    let json: serde_json::Value = serde_json::from_str(text).unwrap();
    let formats = json["formats"].as_object().unwrap();
    assert_eq!(formats.len(), QuantFormat::ALL.len());
    QuantFormat::ALL
        .iter()
        .map(|&format| {
            let entry = &formats[format.name()];
            let hex = entry["bytes_hex"].as_str().unwrap();
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            let bits = entry["f32_bits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            Case { format, bytes, bits }
        })
        .collect()
}

fn assert_bits(format: QuantFormat, got: &[f32], want: &[u32]) {
    assert_eq!(got.len(), want.len(), "{format}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.to_bits(),
            *w,
            "{format} element {i}: kiln {g}, gguf-py {}",
            f32::from_bits(*w)
        );
    }
}

#[test]
fn dequantize_matches_gguf_py_bit_for_bit() {
    for case in cases() {
        assert_eq!(case.bytes.len(), 2 * case.format.block_bytes(), "{}", case.format);
        let mut out = vec![0f32; case.bits.len()];
        kiln_tensor::quant::dequantize(case.format, &case.bytes, &mut out).unwrap();
        assert_bits(case.format, &out, &case.bits);
    }
}

#[test]
fn tensor_to_f32_matches_gguf_py_bit_for_bit() {
    let cases = cases();
    let mut b = common::Builder::default();
    for case in &cases {
        let len = case.bits.len() as u64;
        let id = GgmlType::Quant(case.format).id();
        b = b.tensor(case.format.name(), &[len / 2, 2], id, case.bytes.clone());
    }
    let file = GgufFile::from_bytes(Arc::new(b.build().bytes)).unwrap();
    for case in &cases {
        let t = file.tensor_to_f32(case.format.name()).unwrap();
        assert_eq!(t.dims(), [2, case.bits.len() / 2]);
        assert_bits(case.format, &t.to_vec::<f32>().unwrap(), &case.bits);
    }
}
