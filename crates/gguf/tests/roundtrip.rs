//! Files written by the test writer read back exactly: metadata of every type, tensors of every
//! supported type, alignment, typed getters and their errors.

mod common;

use std::sync::Arc;

use common::{sample, Builder, SAMPLE_F32};
use kiln_gguf::{GgmlType, GgufError, GgufFile, MetadataArray, MetadataValue, QuantFormat};

fn parse(bytes: Vec<u8>) -> kiln_gguf::Result<GgufFile> {
    GgufFile::from_bytes(Arc::new(bytes))
}

fn values(file: &GgufFile, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = file.tensor_to_f32(name).unwrap();
    (t.dims().to_vec(), t.to_vec::<f32>().unwrap())
}

#[test]
fn every_metadata_type_round_trips() {
    for version in [2, 3] {
        let mut b = sample();
        b.version = version;
        let file = parse(b.build().bytes).unwrap();
        assert_eq!(file.version(), version);
        let expected = common::every_metadata_type();
        assert_eq!(file.metadata().len(), expected.len());
        for (key, value) in expected {
            assert_eq!(file.get(key), Some(&value), "{key}");
        }
        let nested = file.get("t.arr.nested").unwrap().as_nested_array().unwrap();
        assert_eq!(
            nested[2].as_nested_array().unwrap()[0].as_u8_array(),
            Some(&[9u8][..])
        );
    }
}

#[test]
fn tensors_of_every_supported_type_round_trip() {
    let built = sample().build();
    let file = parse(built.bytes.clone()).unwrap();
    assert_eq!(file.alignment(), 32);
    assert_eq!(file.data_offset(), built.data_offset);
    let names: Vec<&str> = file.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a.f32", "b.f16", "c.bf16", "d.q8_0", "e.q4_1"]);
    let types: Vec<GgmlType> = file.tensors().iter().map(|t| t.dtype).collect();
    assert_eq!(
        types,
        [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::Quant(QuantFormat::Q8_0),
            GgmlType::Quant(QuantFormat::Q4_1)
        ]
    );
    for (t, rel) in file.tensors().iter().zip(&built.rel_offsets) {
        assert_eq!(t.offset, built.data_offset + *rel as usize, "{}", t.name);
        assert_eq!(t.offset % 32, 0);
        assert_eq!(t.n_elements, t.dims.iter().product::<usize>());
    }
    let n_bytes: Vec<usize> = file.tensors().iter().map(|t| t.n_bytes).collect();
    assert_eq!(n_bytes, [24, 8, 8, 68, 40]);

    let a = file.tensor("a.f32").unwrap();
    assert_eq!(a.dims, [3, 2]);
    assert_eq!(a.shape(), [2, 3]);
    assert_eq!(
        file.tensor_bytes("a.f32").unwrap(),
        common::f32_bytes(&SAMPLE_F32)
    );
    assert_eq!(values(&file, "a.f32"), (vec![2, 3], SAMPLE_F32.to_vec()));
    assert_eq!(
        values(&file, "b.f16"),
        (vec![4], vec![0.5, -1.0, 65504.0, 2f32.powi(-14)])
    );
    let big = half::bf16::from_f32(1e30).to_f32();
    assert_eq!(
        values(&file, "c.bf16"),
        (vec![2, 2], vec![1.0, -3.0, big, 0.15625])
    );
    let q8: Vec<f32> = (0..32)
        .map(|i| (i - 16) as f32 * 0.5)
        .chain((0..32).map(|i| (i * 4 - 64) as f32 * -0.125))
        .collect();
    assert_eq!(values(&file, "d.q8_0"), (vec![2, 32], q8));
    let q41: Vec<f32> = (0..32)
        .map(|i| (i % 16) as f32 * 0.25 - 1.0)
        .chain((0..32).map(|i| (15 - i % 16) as f32 * 2.0 + 0.5))
        .collect();
    assert_eq!(values(&file, "e.q4_1"), (vec![64], q41));
}

#[test]
fn alignment_key_lays_out_the_data() {
    for alignment in [1u32, 8, 64, 256] {
        let built = Builder::default()
            .alignment(alignment)
            .tensor("x", &[3], 0, common::f32_bytes(&[1.0, 2.0, 3.0]))
            .tensor("y", &[1], 0, common::f32_bytes(&[4.0]))
            .build();
        let file = parse(built.bytes).unwrap();
        assert_eq!(file.alignment(), alignment as usize);
        assert_eq!(file.data_offset() % alignment as usize, 0);
        assert_eq!(values(&file, "y").1, [4.0]);
        assert_eq!(values(&file, "x").1, [1.0, 2.0, 3.0]);
    }
}

#[test]
fn typed_getters_name_the_key_and_the_types() {
    let file = parse(sample().build().bytes).unwrap();
    assert_eq!(file.get_u32("t.u8").unwrap(), 200);
    assert_eq!(file.get_u32("t.u32").unwrap(), 4_000_000_000);
    assert_eq!(file.get_u64("t.u64").unwrap(), u64::MAX);
    assert_eq!(file.get_f32("t.f32").unwrap(), 1e-5);
    assert!(file.get_bool("t.bool").unwrap());
    assert_eq!(file.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(file.get_string_array("t.arr.string").unwrap(), ["a", "", "ü"]);
    assert_eq!(file.get_i32_array("t.arr.i32").unwrap(), [-1, 0, 1]);

    let err = file.get_u32("t.u64").unwrap_err();
    assert!(matches!(&err, GgufError::WrongType { key, actual, .. } if key == "t.u64" && actual == "u64"));
    assert_eq!(
        err.to_string(),
        "metadata key `t.u64` holds u64, expected an integer that fits in u32"
    );
    let err = file.get_u32("t.i32").unwrap_err();
    assert!(matches!(err, GgufError::WrongType { .. }), "{err}");
    let err = file.get_string_array("t.arr.u32").unwrap_err();
    assert_eq!(
        err.to_string(),
        "metadata key `t.arr.u32` holds array of 3 u32, expected array of string"
    );
    let err = file.get_str("llama.block_count").unwrap_err();
    assert!(
        matches!(&err, GgufError::MissingKey { key } if key == "llama.block_count"),
        "{err}"
    );
    assert_eq!(file.get("nope"), None);
}

#[test]
fn missing_tensor_is_a_clear_error() {
    let file = parse(sample().build().bytes).unwrap();
    for err in [
        file.tensor("nope").unwrap_err(),
        file.tensor_bytes("nope").unwrap_err(),
        file.tensor_to_f32("nope").unwrap_err(),
    ] {
        assert_eq!(
            err.to_string(),
            "no tensor named `nope` in the file (it has 5 tensors)"
        );
    }
}

#[test]
fn unsupported_tensor_type_opens_but_fails_when_read() {
    let file = parse(
        Builder::default()
            .tensor("q5k", &[256], 13, vec![0; 176])
            .tensor("weird", &[4], 999, vec![0; 16])
            .tensor("ok", &[2], 0, common::f32_bytes(&[1.0, 2.0]))
            .build()
            .bytes,
    )
    .unwrap();
    assert_eq!(file.tensor("q5k").unwrap().dtype, GgmlType::Unsupported(13));
    assert_eq!(file.tensor("q5k").unwrap().dtype.name(), "Q5_K");
    let err = file.tensor_bytes("q5k").unwrap_err();
    assert!(matches!(
        err,
        GgufError::UnsupportedTensorType { type_id: 13, .. }
    ));
    assert!(
        err.to_string()
            .starts_with("unsupported tensor type 13 (q5k, ggml type Q5_K)"),
        "{err}"
    );
    let err = file.tensor_to_f32("weird").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("unsupported tensor type 999 (weird, ggml type unknown)"),
        "{err}"
    );
    assert_eq!(values(&file, "ok").1, [1.0, 2.0]);
}

#[test]
fn open_maps_the_file_and_the_backing_outlives_it() {
    let dir = std::env::temp_dir().join(format!("kiln-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sample.gguf");
    std::fs::write(&path, sample().build().bytes).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let info = file.tensor("a.f32").unwrap().clone();
    let backing = file.backing();
    drop(file);
    let bytes = &(*backing).as_ref()[info.offset..info.offset + info.n_bytes];
    assert_eq!(bytes, common::f32_bytes(&SAMPLE_F32));
    std::fs::remove_dir_all(&dir).unwrap();

    let err = GgufFile::open(dir.join("absent.gguf")).unwrap_err();
    assert!(matches!(err, GgufError::Io { .. }), "{err}");
    assert!(err.to_string().contains("absent.gguf"), "{err}");
}

#[test]
fn empty_arrays_and_strings_are_fine() {
    let file = parse(
        Builder::default()
            .kv("e", MetadataValue::Array(MetadataArray::String(vec![])))
            .kv("s", MetadataValue::String(String::new()))
            .build()
            .bytes,
    )
    .unwrap();
    assert_eq!(file.get_string_array("e").unwrap().len(), 0);
    assert_eq!(file.get_str("s").unwrap(), "");
    assert!(file.tensors().is_empty());
}
