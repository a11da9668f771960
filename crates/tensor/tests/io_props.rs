//! Property tests for `kiln_tensor::io`: safetensors and `.npy` round trips are bit-exact for every
//! dtype, random shapes and non-contiguous inputs; truncated and garbage files are
//! `Error::Format`, never a panic.

use std::path::{Path, PathBuf};

use kiln_tensor::storage::{Buffer, CpuStorage};
use kiln_tensor::{io, DType, Error, Layout, Shape, Tensor};
use proptest::prelude::*;

/// A fresh directory for one test, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "kiln-io-props-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A contiguous tensor whose elements are the given raw little-endian bytes (any bit pattern,
/// NaN payloads included).
fn from_bytes(dtype: DType, bytes: &[u8], shape: &[usize]) -> Tensor {
    fn st<T: kiln_tensor::WithDType>(bytes: &[u8]) -> CpuStorage {
        CpuStorage::from_vec(bytemuck::pod_collect_to_vec::<u8, T>(bytes))
    }
    let storage = match dtype {
        DType::U8 => st::<u8>(bytes),
        DType::U32 => st::<u32>(bytes),
        DType::I64 => st::<i64>(bytes),
        DType::F16 => st::<half::f16>(bytes),
        DType::BF16 => st::<half::bf16>(bytes),
        DType::F32 => st::<f32>(bytes),
        DType::F64 => st::<f64>(bytes),
    };
    Tensor::from_storage(storage, Layout::contiguous(Shape::from(shape)))
}

/// The raw bytes of a tensor's elements in row-major order.
fn row_major_bytes(t: &Tensor) -> Vec<u8> {
    let c = t.contiguous().unwrap();
    let size = c.dtype().size_in_bytes();
    let r = c.layout().contiguous_range().unwrap();
    c.cpu_storage().unwrap().as_bytes()[r.start * size..r.end * size].to_vec()
}

fn is_mapped(t: &Tensor) -> bool {
    kiln_tensor::map_storage!(t.cpu_storage().unwrap(), b => matches!(b, Buffer::Mapped { .. }))
}

/// How a generated tensor is viewed before saving.
#[derive(Clone, Copy, Debug)]
enum View {
    Contiguous,
    /// All dimensions reversed (a transpose).
    Reversed,
    /// The first dimension without its first entry.
    Narrowed,
    /// A new leading dimension of 2 with stride 0.
    Broadcast,
}

fn apply(t: &Tensor, view: View) -> Tensor {
    match view {
        View::Contiguous => t.clone(),
        View::Reversed => {
            let perm: Vec<usize> = (0..t.rank()).rev().collect();
            t.permute(&perm).unwrap()
        }
        View::Narrowed if t.rank() > 0 && t.dims()[0] > 0 => t.narrow(0, 1, t.dims()[0] - 1).unwrap(),
        View::Narrowed => t.clone(),
        View::Broadcast => {
            let mut dims = vec![2];
            dims.extend_from_slice(t.dims());
            t.unsqueeze(0).unwrap().broadcast_to(dims).unwrap()
        }
    }
}

/// A random tensor (any dtype, rank 0-4, dims 0-5, arbitrary bits) and a view of it.
fn tensor_strategy() -> impl Strategy<Value = Tensor> {
    let dtype = prop::sample::select(DType::ALL.to_vec());
    let shape = prop::collection::vec(0usize..=5, 0..=4);
    let view = prop::sample::select(vec![
        View::Contiguous,
        View::Reversed,
        View::Narrowed,
        View::Broadcast,
    ]);
    (dtype, shape, view).prop_flat_map(|(dtype, shape, view)| {
        let n = shape.iter().product::<usize>() * dtype.size_in_bytes();
        prop::collection::vec(any::<u8>(), n)
            .prop_map(move |bytes| apply(&from_bytes(dtype, &bytes, &shape), view))
    })
}

fn assert_format_error(e: Error, path: &Path) {
    let msg = e.to_string();
    assert!(
        matches!(e, Error::Format { .. }),
        "expected a format error, got {msg}"
    );
    assert!(msg.contains(&path.display().to_string()), "{msg}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn safetensors_round_trip_is_bit_exact(tensors in prop::collection::vec(tensor_strategy(), 1..4)) {
        let dir = TempDir::new("st");
        let path = dir.path("m.safetensors");
        let named: Vec<(String, Tensor)> =
            tensors.iter().enumerate().map(|(i, t)| (format!("t{i}"), t.clone())).collect();
        io::save_safetensors(&named, &path).unwrap();
        let loaded = io::load_safetensors(&path).unwrap();
        prop_assert_eq!(loaded.len(), named.len());
        for (name, t) in &named {
            let l = &loaded[name];
            prop_assert_eq!(l.dtype(), t.dtype());
            prop_assert_eq!(l.dims(), t.dims());
            prop_assert_eq!(row_major_bytes(l), row_major_bytes(t));
            // Files we write keep every tensor aligned, so loading never copies.
            prop_assert!(is_mapped(l), "{} was copied", name);
        }
        // The in-memory path agrees with the file.
        let bytes = io::save_safetensors_to_bytes(&named).unwrap();
        prop_assert_eq!(&bytes, &std::fs::read(&path).unwrap());
        let from_mem = io::load_safetensors_from_bytes(&bytes).unwrap();
        for (name, t) in &named {
            prop_assert_eq!(row_major_bytes(&from_mem[name]), row_major_bytes(t));
        }
    }

    #[test]
    fn npy_round_trip_is_bit_exact(t in tensor_strategy()) {
        let dir = TempDir::new("npy");
        let path = dir.path("a.npy");
        if t.dtype() == DType::BF16 {
            let unsupported = matches!(io::save_npy(&t, &path), Err(Error::UnsupportedDType { .. }));
            prop_assert!(unsupported, "bf16 must be refused");
            prop_assert!(!path.exists());
            return Ok(());
        }
        io::save_npy(&t, &path).unwrap();
        let l = io::load_npy(&path).unwrap();
        prop_assert_eq!(l.dtype(), t.dtype());
        prop_assert_eq!(l.dims(), t.dims());
        prop_assert_eq!(row_major_bytes(&l), row_major_bytes(&t));
        let m = io::load_npy_from_bytes(&io::save_npy_to_bytes(&t).unwrap()).unwrap();
        prop_assert_eq!(row_major_bytes(&m), row_major_bytes(&t));
    }

    #[test]
    fn truncated_files_are_format_errors(t in tensor_strategy(), cut in any::<prop::sample::Index>()) {
        let dir = TempDir::new("trunc");
        let st = dir.path("m.safetensors");
        io::save_safetensors([("x", &t)], &st).unwrap();
        let full = std::fs::read(&st).unwrap();
        let len = cut.index(full.len()); // strictly shorter than the file
        std::fs::write(&st, &full[..len]).unwrap();
        assert_format_error(io::load_safetensors(&st).unwrap_err(), &st);

        if t.dtype() != DType::BF16 {
            let npy = dir.path("a.npy");
            io::save_npy(&t, &npy).unwrap();
            let full = std::fs::read(&npy).unwrap();
            let len = cut.index(full.len());
            std::fs::write(&npy, &full[..len]).unwrap();
            assert_format_error(io::load_npy(&npy).unwrap_err(), &npy);
        }
    }

    #[test]
    fn garbage_files_are_format_errors(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let dir = TempDir::new("garbage");
        let path = dir.path("junk.bin");
        std::fs::write(&path, &bytes).unwrap();
        assert_format_error(io::load_safetensors(&path).unwrap_err(), &path);
        assert_format_error(io::load_npy(&path).unwrap_err(), &path);
        // A plausible header length followed by garbage.
        let mut framed = ((bytes.len() as u64) / 2).to_le_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        std::fs::write(&path, &framed).unwrap();
        assert_format_error(io::load_safetensors(&path).unwrap_err(), &path);
    }
}

#[test]
fn saving_replaces_files_atomically_and_cleans_up() {
    let dir = TempDir::new("atomic");
    let path = dir.path("m.safetensors");
    let a = Tensor::from_vec(vec![1f32, 2., 3.], [3]).unwrap();
    io::save_safetensors([("a", &a)], &path).unwrap();
    let old = io::load_safetensors(&path).unwrap();
    // Overwrite while the old file is mapped: the old tensors stay valid, the new file is whole.
    let b = Tensor::from_vec(vec![9u8; 1000], [10, 100]).unwrap();
    io::save_safetensors([("b", &b)], &path).unwrap();
    assert_eq!(old["a"].to_vec::<f32>().unwrap(), vec![1., 2., 3.]);
    assert_eq!(io::load_safetensors(&path).unwrap()["b"].dims(), &[10, 100]);
    // A failed save (duplicate names) leaves the previous file and no temporary files.
    assert!(io::save_safetensors([("a", &a), ("a", &a)], &path).is_err());
    io::save_npy(&a, dir.path("a.npy")).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["a.npy".to_string(), "m.safetensors".to_string()]);
    assert_eq!(io::load_safetensors(&path).unwrap()["b"].dims(), &[10, 100]);
}

#[test]
fn empty_and_missing_files() {
    let dir = TempDir::new("empty");
    let path = dir.path("empty.safetensors");
    std::fs::write(&path, b"").unwrap();
    assert_format_error(io::load_safetensors(&path).unwrap_err(), &path);
    assert_format_error(io::load_npy(&path).unwrap_err(), &path);
    let missing = dir.path("missing.npy");
    let e = io::load_npy(&missing).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert!(e.to_string().contains("missing.npy"), "{e}");
    // Saving into a directory that does not exist is an Io error too.
    let a = Tensor::from_vec(vec![1f32], [1]).unwrap();
    let e = io::save_npy(&a, dir.path("no/such/dir/a.npy")).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
}

#[test]
fn tensor_methods_round_trip_npy() {
    let dir = TempDir::new("methods");
    let path = dir.path("x.npy");
    let t = Tensor::from_vec((0..12i64).collect(), [3, 4])
        .unwrap()
        .t()
        .unwrap();
    t.write_npy(&path).unwrap();
    let l = Tensor::read_npy(&path).unwrap();
    assert_eq!(l.dims(), &[4, 3]);
    assert_eq!(l.to_vec::<i64>().unwrap(), t.to_vec::<i64>().unwrap());
}
