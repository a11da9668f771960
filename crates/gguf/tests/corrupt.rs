//! Each kind of broken file is the right error: truncated at every length, bad magic and
//! version, misaligned / out-of-bounds / overlapping tensors, lying counts (answered quickly and
//! without a large allocation), bad dims, bad UTF-8, duplicates, bad alignment, bad types.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{sample, Builder, Built};
use kiln_gguf::{GgufError, GgufFile, MetadataArray, MetadataValue};

/// Records the largest single allocation each thread makes, so a test can show that a declared
/// count of u64::MAX never turns into a matching allocation.
struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// Parses `bytes`, which must fail: quickly, and without allocating more than 1 MiB at once.
fn parse_err(bytes: &[u8]) -> GgufError {
    let data: Arc<Vec<u8>> = Arc::new(bytes.to_vec());
    LARGEST.with(|l| l.set(0));
    let start = Instant::now();
    let result = GgufFile::from_bytes(data);
    let (elapsed, largest) = (start.elapsed(), LARGEST.with(|l| l.get()));
    let err = result.expect_err("the corrupt file parsed");
    assert!(
        largest < 1 << 20,
        "allocated {largest} bytes at once before failing with: {err}"
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "took {elapsed:?} to fail with: {err}"
    );
    err
}

fn patch_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn patch_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn kv_index(key: &str) -> usize {
    common::every_metadata_type()
        .iter()
        .position(|(k, _)| *k == key)
        .unwrap()
}

#[test]
fn every_truncation_is_an_error() {
    let Built { bytes, offset_at, .. } = sample().build();
    let infos_end = offset_at.last().unwrap() + 8;
    GgufFile::from_bytes(Arc::new(bytes.clone())).unwrap();
    for len in 0..bytes.len() {
        let err = parse_err(&bytes[..len]);
        match &err {
            GgufError::Truncated {
                offset,
                need,
                available,
                ..
            } => {
                assert!(len < infos_end, "{len}: {err}");
                assert!(*offset <= len && (*available as u64) < *need, "{len}: {err}");
                assert!(
                    err.to_string().contains(&format!("byte offset {offset}")),
                    "{err}"
                );
            }
            GgufError::CountTooLarge { .. } => assert!(len < infos_end, "{len}: {err}"),
            GgufError::TensorOutOfBounds { file_len, .. } => {
                assert!(len >= infos_end, "{len}: {err}");
                assert_eq!(*file_len, len);
            }
            other => panic!("prefix of {len} bytes: unexpected error {other}"),
        }
    }
}

#[test]
fn bad_magic_is_named() {
    let mut bytes = sample().build().bytes;
    bytes[3] = b'G';
    let err = parse_err(&bytes);
    assert!(
        matches!(err, GgufError::BadMagic { found } if &found == b"GGUG"),
        "{err}"
    );
    assert!(err.to_string().contains("expected \"GGUF\""), "{err}");
    let err = parse_err(b"GGU");
    assert!(matches!(err, GgufError::Truncated { offset: 0, .. }), "{err}");
}

#[test]
fn only_versions_2_and_3_are_read() {
    for version in [0u32, 1, 4, 0x0300_0000] {
        let mut bytes = sample().build().bytes;
        patch_u32(&mut bytes, 4, version);
        let err = parse_err(&bytes);
        assert!(
            matches!(err, GgufError::UnsupportedVersion { version: v } if v == version),
            "{err}"
        );
        assert!(err.to_string().contains("expected 2 or 3"), "{err}");
    }
}

#[test]
fn misaligned_offset() {
    let mut built = sample().build();
    patch_u64(&mut built.bytes, built.offset_at[1], built.rel_offsets[1] + 4);
    let err = parse_err(&built.bytes);
    assert!(
        matches!(&err, GgufError::MisalignedTensor { name, alignment: 32, .. } if name == "b.f16"),
        "{err}"
    );
}

#[test]
fn offset_beyond_the_end() {
    for rel in [3200, 1 << 40, u64::MAX - 31, u64::MAX / 32 * 32] {
        let mut built = sample().build();
        patch_u64(&mut built.bytes, built.offset_at[4], rel);
        let err = parse_err(&built.bytes);
        assert!(
            matches!(&err, GgufError::TensorOutOfBounds { name, .. } if name == "e.q4_1"),
            "{err}"
        );
    }
    // The data section itself starts past the end.
    let mut built = sample().build();
    built.bytes.truncate(built.data_offset - 1);
    let err = parse_err(&built.bytes);
    assert!(
        matches!(&err, GgufError::TensorOutOfBounds { name, .. } if name == "a.f32"),
        "{err}"
    );
}

#[test]
fn overlapping_tensors() {
    let mut built = sample().build();
    // b.f16 (8 bytes) inside a.f32 (24 bytes at 0).
    patch_u64(&mut built.bytes, built.offset_at[1], 0);
    let err = parse_err(&built.bytes);
    assert!(matches!(err, GgufError::OverlappingTensors { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("a.f32") && msg.contains("b.f16"), "{msg}");
    // Same start, different sizes, later in the file.
    let mut built = sample().build();
    patch_u64(&mut built.bytes, built.offset_at[4], built.rel_offsets[3]);
    let err = parse_err(&built.bytes);
    assert!(matches!(err, GgufError::OverlappingTensors { .. }), "{err}");
}

#[test]
fn huge_declared_counts_fail_fast_without_allocating() {
    let built = sample().build();
    let arrays = [
        "t.arr.u8",
        "t.arr.string",
        "t.arr.nested",
        "t.arr.u64",
        "t.arr.bool",
    ];
    for huge in [u64::MAX, u64::MAX / 2, 1 << 40, 1 << 32] {
        // Counts in the header.
        for at in [built.tensor_count_at, built.kv_count_at] {
            let mut bytes = built.bytes.clone();
            patch_u64(&mut bytes, at, huge);
            let err = parse_err(&bytes);
            assert!(
                matches!(err, GgufError::CountTooLarge { count, .. } if count == huge),
                "{err}"
            );
        }
        // String lengths: a key, a string value, a tensor name.
        let string_fields = [
            built.key_at[0],
            built.value_at[kv_index("t.string")],
            built.info_at[2],
        ];
        for at in string_fields {
            let mut bytes = built.bytes.clone();
            patch_u64(&mut bytes, at, huge);
            let err = parse_err(&bytes);
            assert!(
                matches!(err, GgufError::Truncated { need, .. } if need == huge),
                "{err}"
            );
        }
        // Array element counts (after the element type).
        for key in arrays {
            let mut bytes = built.bytes.clone();
            patch_u64(&mut bytes, built.value_at[kv_index(key)] + 4, huge);
            let err = parse_err(&bytes);
            assert!(
                matches!(err, GgufError::CountTooLarge { count, .. } if count == huge),
                "{key}: {err}"
            );
        }
        // The count of an array nested in an array.
        let mut bytes = built.bytes.clone();
        patch_u64(
            &mut bytes,
            built.value_at[kv_index("t.arr.nested")] + 12 + 4,
            huge,
        );
        let err = parse_err(&bytes);
        assert!(
            matches!(err, GgufError::CountTooLarge { count, .. } if count == huge),
            "{err}"
        );
        // Dimensions: overflow, or a tensor far larger than the file.
        let mut bytes = built.bytes.clone();
        patch_u64(&mut bytes, built.n_dims_at[0] + 4, huge);
        patch_u64(&mut bytes, built.n_dims_at[0] + 12, huge);
        let err = parse_err(&bytes);
        assert!(
            matches!(
                &err,
                GgufError::InvalidTensorInfo { .. } | GgufError::TensorOutOfBounds { .. }
            ),
            "{err}"
        );
    }
}

#[test]
fn bad_dims() {
    let five = Builder::default()
        .tensor("t", &[1, 1, 1, 1, 1], 0, vec![0; 4])
        .build();
    let err = parse_err(&five.bytes);
    assert!(
        matches!(&err, GgufError::InvalidTensorInfo { name, .. } if name == "t"),
        "{err}"
    );
    assert!(err.to_string().contains("5 dimensions, expected 1..=4"), "{err}");

    let mut built = sample().build();
    patch_u32(&mut built.bytes, built.n_dims_at[0], 0);
    let err = parse_err(&built.bytes);
    assert!(err.to_string().contains("0 dimensions, expected 1..=4"), "{err}");

    let mut built = sample().build();
    patch_u32(&mut built.bytes, built.n_dims_at[0], u32::MAX);
    assert!(matches!(
        parse_err(&built.bytes),
        GgufError::InvalidTensorInfo { .. }
    ));

    let zero = Builder::default().tensor("z", &[4, 0], 0, vec![]).build();
    let err = parse_err(&zero.bytes);
    assert!(
        err.to_string().contains("dimension 1 is 0, expected at least 1"),
        "{err}"
    );

    let overflow = Builder::default()
        .tensor("o", &[1 << 32, 1 << 32], 0, vec![])
        .build();
    let err = parse_err(&overflow.bytes);
    assert!(err.to_string().contains("overflows the element count"), "{err}");

    let bytes_overflow = Builder::default().tensor("b", &[1 << 62], 0, vec![]).build();
    let err = parse_err(&bytes_overflow.bytes);
    assert!(err.to_string().contains("overflow the byte count"), "{err}");

    let partial = Builder::default().tensor("q", &[16], 8, vec![0; 34]).build();
    let err = parse_err(&partial.bytes);
    assert!(
        err.to_string()
            .contains("not a whole number of Q8_0 blocks of 32"),
        "{err}"
    );
}

#[test]
fn non_utf8_strings_name_where_they_are() {
    let key = Builder::default()
        .raw_kv(b"bad\xffkey", MetadataValue::U8(1))
        .build();
    let err = parse_err(&key.bytes);
    assert!(
        matches!(&err, GgufError::InvalidUtf8 { what, offset, .. } if what == "metadata key #0" && *offset == key.key_at[0]),
        "{err}"
    );

    let mut value = Builder::default()
        .kv("k.s", MetadataValue::String("abc".into()))
        .build();
    let at = value.value_at[0] + 8;
    value.bytes[at] = 0xC0;
    let err = parse_err(&value.bytes);
    assert!(err.to_string().contains("value of metadata key `k.s`"), "{err}");

    let mut built = sample().build();
    let at = built.info_at[0] + 8;
    built.bytes[at] = 0xFF;
    let err = parse_err(&built.bytes);
    assert!(
        matches!(&err, GgufError::InvalidUtf8 { what, .. } if what == "name of tensor #0"),
        "{err}"
    );
}

#[test]
fn duplicates() {
    let keys = Builder::default()
        .kv("k", MetadataValue::U8(1))
        .kv("k", MetadataValue::U8(2))
        .build();
    let err = parse_err(&keys.bytes);
    assert!(
        matches!(&err, GgufError::DuplicateKey { key, offset } if key == "k" && *offset == keys.key_at[1]),
        "{err}"
    );

    let tensors = Builder::default()
        .tensor("t", &[1], 0, vec![0; 4])
        .tensor("t", &[1], 0, vec![0; 4])
        .build();
    let err = parse_err(&tensors.bytes);
    assert!(
        matches!(&err, GgufError::DuplicateTensor { name, offset } if name == "t" && *offset == tensors.info_at[1]),
        "{err}"
    );
}

#[test]
fn bad_alignment() {
    for a in [0u32, 3, 48] {
        let built = Builder::default()
            .kv("general.alignment", MetadataValue::U32(a))
            .build();
        let err = parse_err(&built.bytes);
        assert!(
            matches!(err, GgufError::InvalidAlignment { value } if value == a as u64),
            "{err}"
        );
    }
    let built = Builder::default()
        .kv("general.alignment", MetadataValue::String("32".into()))
        .build();
    let err = parse_err(&built.bytes);
    assert!(
        matches!(&err, GgufError::WrongType { key, .. } if key == "general.alignment"),
        "{err}"
    );
    let built = Builder::default()
        .kv("general.alignment", MetadataValue::U64(1 << 63))
        .tensor("t", &[1], 0, vec![0; 4])
        .build();
    assert!(matches!(
        parse_err(&built.bytes),
        GgufError::TensorOutOfBounds { .. }
    ));
}

#[test]
fn bad_value_types() {
    let mut built = sample().build();
    let i = kv_index("t.u32");
    patch_u32(&mut built.bytes, built.value_at[i] - 4, 13);
    let err = parse_err(&built.bytes);
    assert!(
        matches!(&err, GgufError::UnknownValueType { what, type_id: 13, .. } if what.contains("t.u32")),
        "{err}"
    );

    let mut built = sample().build();
    patch_u32(&mut built.bytes, built.value_at[kv_index("t.arr.i32")], 99);
    let err = parse_err(&built.bytes);
    assert!(
        matches!(err, GgufError::UnknownValueType { type_id: 99, .. }),
        "{err}"
    );

    let mut built = sample().build();
    let at = built.value_at[kv_index("t.bool")];
    built.bytes[at] = 2;
    let err = parse_err(&built.bytes);
    assert!(matches!(err, GgufError::InvalidBool { value: 2, .. }), "{err}");
}

#[test]
fn array_nesting_is_limited() {
    fn nest(depth: usize) -> MetadataValue {
        let mut a = MetadataArray::U8(vec![1]);
        for _ in 1..depth {
            a = MetadataArray::Array(vec![a]);
        }
        MetadataValue::Array(a)
    }
    let ok = Builder::default()
        .kv("n", nest(kiln_gguf::MAX_ARRAY_DEPTH))
        .build();
    GgufFile::from_bytes(Arc::new(ok.bytes)).unwrap();
    let deep = Builder::default()
        .kv("n", nest(kiln_gguf::MAX_ARRAY_DEPTH + 1))
        .build();
    let err = parse_err(&deep.bytes);
    assert!(
        matches!(err, GgufError::NestingTooDeep { depth: 5, max: 4, .. }),
        "{err}"
    );
}
