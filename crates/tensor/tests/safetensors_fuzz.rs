//! Mutation fuzzing of the safetensors reader: a valid file with bytes overwritten, inserted or
//! deleted, its header length set to extreme values, digits of its JSON header changed, or
//! truncated must load to `Ok` or `Err`, never a panic or a runaway allocation.
//!
//! `KILN_FUZZ_CASES` sets the number of cases (default 2000), e.g.
//! `KILN_FUZZ_CASES=1000000 cargo test --release -p kiln-tensor --test safetensors_fuzz`.

use kiln_tensor::io::safetensors::{load_from_bytes, save_to_bytes};
use kiln_tensor::{DType, Tensor};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

fn base() -> Vec<u8> {
    let a = Tensor::from_vec(vec![1.0f32, -2.0, 3.5, 4.0, 5.0, 6.0], [2, 3]).unwrap();
    let b = a.to_dtype(DType::F16).unwrap();
    let c = Tensor::from_vec(vec![7i64, 8, 9], [3]).unwrap();
    save_to_bytes([
        ("a".to_string(), a),
        ("b.weight".to_string(), b),
        ("c".to_string(), c),
    ])
    .unwrap()
}

#[derive(Clone, Debug)]
enum Mutation {
    Overwrite(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    HeaderLength(u64),
    Digit(usize, u8),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let extreme = prop_oneof![
        Just(0u64),
        Just(u64::MAX),
        Just(u64::MAX / 2),
        Just(1 << 40),
        any::<u64>(),
        0u64..400
    ];
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Mutation::Overwrite(a, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Mutation::Insert(a, b)),
        any::<usize>().prop_map(Mutation::Delete),
        extreme.prop_map(Mutation::HeaderLength),
        (any::<usize>(), 0u8..10).prop_map(|(a, d)| Mutation::Digit(a, d)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let n = bytes.len().max(1);
        match *m {
            Mutation::Overwrite(at, v) if !bytes.is_empty() => bytes[at % n] = v,
            Mutation::Insert(at, v) => bytes.insert(at % (bytes.len() + 1), v),
            Mutation::Delete(at) if !bytes.is_empty() => {
                bytes.remove(at % n);
            }
            Mutation::HeaderLength(v) if bytes.len() >= 8 => bytes[..8].copy_from_slice(&v.to_le_bytes()),
            Mutation::Digit(at, d) => {
                // Change one digit of the JSON header (shapes and offsets).
                let digits: Vec<usize> = (0..bytes.len())
                    .filter(|&i| bytes[i].is_ascii_digit() && i >= 8)
                    .collect();
                if !digits.is_empty() {
                    bytes[digits[at % digits.len()]] = b'0' + d;
                }
            }
            Mutation::Truncate(at) => bytes.truncate(at % n),
            _ => {}
        }
    }
    bytes
}

fn cases() -> u32 {
    std::env::var("KILN_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..ProptestConfig::default()
    })]

    #[test]
    fn mutated_files_never_panic(mutations in proptest::collection::vec(mutation(), 1..4)) {
        let bytes = apply(base(), &mutations);
        if let Ok(tensors) = load_from_bytes(&bytes) {
            for t in tensors.values() {
                let v = t.to_dtype(DType::F32).and_then(|t| t.to_vec::<f32>());
                prop_assert!(v.is_ok_and(|v| v.len() == t.elem_count()));
            }
        }
    }
}

#[test]
fn the_unmutated_file_loads() {
    let t = load_from_bytes(&base()).unwrap();
    assert_eq!(
        t["a"].to_vec::<f32>().unwrap(),
        vec![1.0, -2.0, 3.5, 4.0, 5.0, 6.0]
    );
    assert_eq!(t["c"].to_vec::<i64>().unwrap(), vec![7, 8, 9]);
}
