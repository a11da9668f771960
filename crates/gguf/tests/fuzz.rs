//! Mutation fuzzing: a valid file with random bytes overwritten, inserted or deleted, fields set
//! to extreme values, or truncated must parse to `Ok` or `Err` and every tensor must read to
//! `Ok` or `Err`: never a panic, an out-of-bounds read or a runaway allocation.
//!
//! `KILN_FUZZ_CASES` sets the number of cases (default 2000), e.g.
//! `KILN_FUZZ_CASES=1000000 cargo test --release -p kiln-gguf --test fuzz`.

mod common;

use std::sync::{Arc, OnceLock};

use kiln_gguf::GgufFile;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;

/// Base files and the offsets of their u64 / u32 header fields.
struct Base {
    bytes: Vec<u8>,
    u64_fields: Vec<usize>,
    u32_fields: Vec<usize>,
}

fn bases() -> &'static [Base] {
    static BASES: OnceLock<Vec<Base>> = OnceLock::new();
    BASES.get_or_init(|| {
        let mut small = common::Builder::default()
            .alignment(1)
            .kv("s", kiln_gguf::MetadataValue::String("x".into()))
            .tensor("f", &[3], 0, common::f32_bytes(&[1.0, 2.0, 3.0]));
        small.tensors.push(common::TensorSpec {
            name: "q".into(),
            dims: vec![32],
            type_id: 3,
            data: vec![0x11; 20],
        });
        [common::sample(), small]
            .iter()
            .map(|b| {
                let built = b.build();
                let mut u64_fields = vec![built.tensor_count_at, built.kv_count_at];
                u64_fields.extend(&built.key_at);
                u64_fields.extend(&built.info_at);
                u64_fields.extend(&built.offset_at);
                u64_fields.extend(built.n_dims_at.iter().map(|a| a + 4));
                // String lengths and array element counts.
                u64_fields.extend(&built.value_at);
                u64_fields.extend(built.value_at.iter().map(|a| a + 4));
                let mut u32_fields = vec![4];
                u32_fields.extend(&built.n_dims_at);
                u32_fields.extend(&built.type_at);
                u32_fields.extend(built.value_at.iter().map(|a| a - 4));
                u32_fields.extend(&built.value_at);
                Base {
                    bytes: built.bytes,
                    u64_fields,
                    u32_fields,
                }
            })
            .collect()
    })
}

#[derive(Clone, Debug)]
enum Mutation {
    Overwrite(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    /// A u64 field of the base (or any offset) set to a value.
    SetU64 {
        field: Index,
        anywhere: bool,
        value: u64,
    },
    /// A u32 field of the base (or any offset) set to a value.
    SetU32 {
        field: Index,
        anywhere: bool,
        value: u32,
    },
    Truncate(Index),
}

fn extreme_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(u64::MAX / 2),
        Just(1 << 63),
        Just(u32::MAX as u64),
        Just(1 << 32),
        Just(1 << 40),
        0u64..4096,
        any::<u64>(),
    ]
}

fn extreme_u32() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0u32), Just(u32::MAX), Just(1 << 31), 0u32..40, any::<u32>()]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Overwrite(i, b)),
        1 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<Index>(), 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        3 => (any::<Index>(), any::<bool>(), extreme_u64())
            .prop_map(|(field, anywhere, value)| Mutation::SetU64 { field, anywhere, value }),
        2 => (any::<Index>(), any::<bool>(), extreme_u32())
            .prop_map(|(field, anywhere, value)| Mutation::SetU32 { field, anywhere, value }),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn put(bytes: &mut [u8], at: usize, value: &[u8]) {
    for (i, b) in value.iter().enumerate() {
        if let Some(slot) = bytes.get_mut(at + i) {
            *slot = *b;
        }
    }
}

fn apply(base: &Base, mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = base.bytes.clone();
    for m in mutations {
        let len = bytes.len().max(1);
        match m {
            Mutation::Overwrite(i, b) => put(&mut bytes, i.index(len), &[*b]),
            Mutation::Insert(i, b) => {
                let at = i.index(bytes.len() + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Mutation::Delete(i, n) => {
                let at = i.index(len).min(bytes.len());
                bytes.drain(at..(at + n).min(bytes.len()));
            }
            Mutation::SetU64 {
                field,
                anywhere,
                value,
            } => {
                let at = if *anywhere {
                    field.index(len)
                } else {
                    *field.get(&base.u64_fields)
                };
                put(&mut bytes, at, &value.to_le_bytes());
            }
            Mutation::SetU32 {
                field,
                anywhere,
                value,
            } => {
                let at = if *anywhere {
                    field.index(len)
                } else {
                    *field.get(&base.u32_fields)
                };
                put(&mut bytes, at, &value.to_le_bytes());
            }
            Mutation::Truncate(i) => bytes.truncate(i.index(len)),
        }
    }
    bytes
}

/// Parses `bytes` and reads everything a caller could.
fn exercise(bytes: Vec<u8>) {
    let Ok(file) = GgufFile::from_bytes(Arc::new(bytes)) else {
        return;
    };
    for (key, value) in file.metadata() {
        let _ = (
            value.as_u64(),
            value.as_f32(),
            value.as_str(),
            value.type_description(),
        );
        let _ = (file.get_u32(key), file.get_string_array(key));
    }
    for t in file.tensors() {
        if let Ok(b) = file.tensor_bytes(&t.name) {
            assert_eq!(b.len(), t.n_bytes);
            assert!(t.offset + t.n_bytes <= file.bytes().len());
        }
        if let Ok(x) = file.tensor_to_f32(&t.name) {
            assert_eq!(x.dims(), t.shape());
        }
    }
}

fn cases() -> u32 {
    std::env::var("KILN_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn mutated_files_never_panic(
        which in any::<Index>(),
        mutations in proptest::collection::vec(mutation(), 1..5),
    ) {
        let base = which.get(bases());
        exercise(apply(base, &mutations));
    }
}

#[test]
fn unmutated_bases_parse() {
    for base in bases() {
        GgufFile::from_bytes(Arc::new(base.bytes.clone())).unwrap();
    }
}
