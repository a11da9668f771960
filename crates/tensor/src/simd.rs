//! Run-time instruction-set dispatch for element-wise kernels.
//!
//! kiln is built for the baseline x86-64 target (SSE2), so plain loops vectorise 4 floats wide
//! and without FMA. Two tools run a kernel compiled for AVX-512 (or AVX2 + FMA) when the CPU has
//! it, with no per-element cost and no `unsafe` in the kernels:
//! - [`crate::multiversion!`] defines a function that calls one of three copies of an
//!   `#[inline(always)]` kernel function, each compiled for one instruction set (for kernels of
//!   any size: the kernel is always inlined into its copies);
//! - [`dispatch`] runs a small closure the same way (LLVM inlines small closures into the wide
//!   function; a large one would stay a baseline call, so large kernels use the macro).
//!
//! Results are identical on every path: Rust never contracts `a * b + c` into an FMA nor
//! reorders a float sum, so only the vector width changes, not the operations.

use std::sync::OnceLock;

/// The widest instruction set this machine supports among those kiln compiles for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 F/VL/BW/DQ (16 f32 lanes), with AVX2 and FMA.
    Avx512,
    /// AVX2 with FMA (8 f32 lanes).
    Avx2Fma,
    /// Baseline code only.
    Portable,
}

/// This machine's [`Isa`], detected once.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let has = |f: &str| match f {
                "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
                "avx512vl" => std::arch::is_x86_feature_detected!("avx512vl"),
                "avx512bw" => std::arch::is_x86_feature_detected!("avx512bw"),
                "avx512dq" => std::arch::is_x86_feature_detected!("avx512dq"),
                "avx2" => std::arch::is_x86_feature_detected!("avx2"),
                "fma" => std::arch::is_x86_feature_detected!("fma"),
                _ => false,
            };
            if ["avx512f", "avx512vl", "avx512bw", "avx512dq", "avx2", "fma"]
                .iter()
                .all(|f| has(f))
            {
                return Isa::Avx512;
            }
            if has("avx2") && has("fma") {
                return Isa::Avx2Fma;
            }
        }
        Isa::Portable
    })
}

/// Whether this CPU has AVX-512 BF16 dot products (`vdpbf16ps`), which
/// [`crate::MatmulPrecision::Bf16`] products use; without them the same arithmetic runs in f32
/// instructions. Detected once.
pub fn has_bf16_dot() -> bool {
    static BF16: OnceLock<bool> = OnceLock::new();
    *BF16.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Runs `body` compiled for the best [`Isa`] of this machine. Call it around a kernel's inner
/// loops (per chunk, inside any rayon closure: code that rayon calls back is not covered).
#[inline(always)]
pub fn dispatch<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        match isa() {
            // SAFETY: `isa()` checked that the CPU supports every feature the callee enables.
            Isa::Avx512 => unsafe { run_avx512(body) },
            // SAFETY: as above.
            Isa::Avx2Fma => unsafe { run_avx2(body) },
            Isa::Portable => body(),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        body()
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi1,bmi2,lzcnt,popcnt")]
unsafe fn run_avx512<R>(body: impl FnOnce() -> R) -> R {
    body()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,bmi1,bmi2,lzcnt,popcnt")]
unsafe fn run_avx2<R>(body: impl FnOnce() -> R) -> R {
    body()
}

/// Defines `fn $name` that runs `$kernel` (an `#[inline(always)]` function with the same
/// arguments) compiled for the best [`Isa`] of this machine:
///
/// ```ignore
/// kiln_tensor::multiversion! {
///     /// Doc of the dispatching function.
///     fn scale_all[F: FloatDType](xs: &mut [F], by: F) = scale_all_kernel[F]
/// }
/// ```
///
/// The generic parameters go in brackets (`[]` when there are none), then the kernel's name and
/// its generic arguments.
#[macro_export]
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident [$($gen:tt)*] ($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? = $kernel:ident [$($targ:ty),*]) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name<$($gen)*>($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi1,bmi2,lzcnt,popcnt")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn wide<$($gen)*>($($arg: $ty),*) $(-> $ret)? {
                    $kernel::<$($targ),*>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma,bmi1,bmi2,lzcnt,popcnt")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2<$($gen)*>($($arg: $ty),*) $(-> $ret)? {
                    $kernel::<$($targ),*>($($arg),*)
                }
                match $crate::simd::isa() {
                    // SAFETY: `isa()` checked that the CPU supports every enabled feature.
                    $crate::simd::Isa::Avx512 => return unsafe { wide::<$($targ),*>($($arg),*) },
                    // SAFETY: as above.
                    $crate::simd::Isa::Avx2Fma => return unsafe { avx2::<$($targ),*>($($arg),*) },
                    $crate::simd::Isa::Portable => {}
                }
            }
            $kernel::<$($targ),*>($($arg),*)
        }
    };
}
