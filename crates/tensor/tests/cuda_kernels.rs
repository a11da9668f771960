//! Every CUDA kernel source compiles to PTX with NVRTC for Ampere (sm_80) and Hopper (sm_90),
//! and `ptxas` assembles that PTX (catching register and shared-memory overruns), on a machine
//! with no GPU. CI sets `KILN_REQUIRE_NVRTC=1` (NVRTC and ptxas from the package registry), so
//! there a missing library fails instead of skipping.
#![cfg(feature = "cuda")]

use std::path::PathBuf;
use std::process::Command;

use kiln_tensor::cuda::{compile_ptx, kernel_sources, nvrtc_available};

const DTYPES: [&str; 7] = ["u8", "u32", "i64", "f16", "bf16", "f32", "f64"];
const FLOATS: [&str; 4] = ["f16", "bf16", "f32", "f64"];

fn required() -> bool {
    std::env::var("KILN_REQUIRE_NVRTC").is_ok_and(|v| v == "1")
}

/// Every kernel the Rust side launches, by module.
fn expected_kernels(module: &str) -> Vec<String> {
    let mut names = Vec::new();
    for d in DTYPES {
        match module {
            "elementwise" => {
                for family in ["copy", "copy_into", "map", "cmp_scalar", "cmp", "binary", "where"] {
                    names.push(format!("{family}_{d}"));
                }
                names.extend(DTYPES.iter().map(|e| format!("cast_{d}_{e}")));
            }
            "conv" => {
                names.push(format!("gather_{d}"));
                if FLOATS.contains(&d) {
                    for family in ["im2col", "col2im", "max_pool", "max_pool_backward"] {
                        names.push(format!("{family}_{d}"));
                    }
                }
            }
            _ => {
                names.push(format!("reduce_{d}"));
                names.push(format!("index_select_{d}"));
                if FLOATS.contains(&d) {
                    names.push(format!("softmax_{d}"));
                }
            }
        }
    }
    names
}

#[test]
fn every_kernel_source_compiles_for_sm80_and_sm90() {
    if let Err(why) = nvrtc_available() {
        assert!(!required(), "KILN_REQUIRE_NVRTC=1 but {why}");
        eprintln!("skipped: {why}");
        return;
    }
    let ptxas = std::env::var_os("KILN_PTXAS").map(PathBuf::from);
    assert!(
        !required() || ptxas.is_some(),
        "KILN_REQUIRE_NVRTC=1 needs KILN_PTXAS (the ptxas binary)"
    );
    if ptxas.is_none() {
        eprintln!("ptxas not checked: set KILN_PTXAS to the ptxas binary");
    }
    // A fresh cache, so every source really goes through NVRTC.
    let dir = std::env::temp_dir().join(format!("kiln-ptx-test-{}", std::process::id()));
    std::env::set_var("KILN_CACHE_DIR", &dir);
    for source in kernel_sources() {
        for (major, minor) in [(8, 0), (9, 0)] {
            let ptx = compile_ptx(source, (major, minor)).unwrap_or_else(|e| panic!("{e}"));
            for name in expected_kernels(source.name) {
                assert!(
                    ptx.contains(&format!(".entry {name}(")),
                    "kernel {name} missing from module {} for sm_{major}{minor}",
                    source.name
                );
            }
            if let Some(ptxas) = &ptxas {
                let file = dir.join(format!("{}-{major}{minor}.ptx", source.name));
                std::fs::write(&file, &ptx).unwrap();
                let out = Command::new(ptxas)
                    .arg(format!("-arch=sm_{major}{minor}"))
                    .arg(&file)
                    .arg("-o")
                    .arg(file.with_extension("cubin"))
                    .output()
                    .expect("running ptxas");
                assert!(
                    out.status.success(),
                    "ptxas rejected {} for sm_{major}{minor}: {}",
                    source.name,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
