// kiln's CUDA prelude: element types, conversions with the CPU's rounding rules, and strided
// indexing. Self-contained (no toolkit headers), so NVRTC alone compiles every kernel.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;
typedef unsigned long long u64;

// Half-precision values travel as their bits; arithmetic happens in f32.
struct f16 { u16 bits; };
struct bf16 { u16 bits; };

__device__ __forceinline__ float f16_to_f32(f16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h.bits));
    return f;
}
__device__ __forceinline__ f16 f32_to_f16(float f) {
    f16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(f));
    return h;
}
__device__ __forceinline__ float bf16_to_f32(bf16 b) {
    return __uint_as_float(((u32)b.bits) << 16);
}
// Round to nearest even; a NaN stays a (quiet) NaN, as the `half` crate does.
__device__ __forceinline__ bf16 f32_to_bf16(float f) {
    u32 u = __float_as_uint(f);
    bf16 r;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        r.bits = (u16)((u >> 16) | 0x40u);
    } else {
        u += 0x7fffu + ((u >> 16) & 1u);
        r.bits = (u16)(u >> 16);
    }
    return r;
}

// Num<T>: the type T computes in (C), and conversions to and from it and f64.
template <typename T> struct Num;
template <> struct Num<float> {
    typedef float C;
    static __device__ __forceinline__ float load(float x) { return x; }
    static __device__ __forceinline__ float store(float x) { return x; }
    static __device__ __forceinline__ double to_f64(float x) { return (double)x; }
    static __device__ __forceinline__ float from_f64(double x) { return (float)x; }
    static __device__ __forceinline__ bool is_nan(float x) { return x != x; }
};
template <> struct Num<double> {
    typedef double C;
    static __device__ __forceinline__ double load(double x) { return x; }
    static __device__ __forceinline__ double store(double x) { return x; }
    static __device__ __forceinline__ double to_f64(double x) { return x; }
    static __device__ __forceinline__ double from_f64(double x) { return x; }
    static __device__ __forceinline__ bool is_nan(double x) { return x != x; }
};
template <> struct Num<f16> {
    typedef float C;
    static __device__ __forceinline__ float load(f16 x) { return f16_to_f32(x); }
    static __device__ __forceinline__ f16 store(float x) { return f32_to_f16(x); }
    static __device__ __forceinline__ double to_f64(f16 x) { return (double)f16_to_f32(x); }
    static __device__ __forceinline__ f16 from_f64(double x) { return f32_to_f16((float)x); }
    static __device__ __forceinline__ bool is_nan(f16 x) { return (x.bits & 0x7fffu) > 0x7c00u; }
};
template <> struct Num<bf16> {
    typedef float C;
    static __device__ __forceinline__ float load(bf16 x) { return bf16_to_f32(x); }
    static __device__ __forceinline__ bf16 store(float x) { return f32_to_bf16(x); }
    static __device__ __forceinline__ double to_f64(bf16 x) { return (double)bf16_to_f32(x); }
    static __device__ __forceinline__ bf16 from_f64(double x) { return f32_to_bf16((float)x); }
    static __device__ __forceinline__ bool is_nan(bf16 x) { return (x.bits & 0x7fffu) > 0x7f80u; }
};
// Integers compute in their own type (wrapping, as on the CPU); from f64 they truncate toward
// zero and saturate, NaN giving 0 (Rust's `as`).
template <> struct Num<u8> {
    typedef u8 C;
    static __device__ __forceinline__ u8 load(u8 x) { return x; }
    static __device__ __forceinline__ u8 store(u8 x) { return x; }
    static __device__ __forceinline__ double to_f64(u8 x) { return (double)x; }
    static __device__ __forceinline__ u8 from_f64(double x) {
        return x != x || x <= 0.0 ? (u8)0 : x >= 255.0 ? (u8)255 : (u8)x;
    }
    static __device__ __forceinline__ bool is_nan(u8) { return false; }
};
template <> struct Num<u32> {
    typedef u32 C;
    static __device__ __forceinline__ u32 load(u32 x) { return x; }
    static __device__ __forceinline__ u32 store(u32 x) { return x; }
    static __device__ __forceinline__ double to_f64(u32 x) { return (double)x; }
    static __device__ __forceinline__ u32 from_f64(double x) {
        return x != x || x <= 0.0 ? 0u : x >= 4294967295.0 ? 4294967295u : (u32)x;
    }
    static __device__ __forceinline__ bool is_nan(u32) { return false; }
};
template <> struct Num<i64> {
    typedef i64 C;
    static __device__ __forceinline__ i64 load(i64 x) { return x; }
    static __device__ __forceinline__ i64 store(i64 x) { return x; }
    static __device__ __forceinline__ double to_f64(i64 x) { return (double)x; }
    static __device__ __forceinline__ i64 from_f64(double x) {
        if (x != x) return 0;
        if (x >= 9223372036854775807.0) return 9223372036854775807LL;
        if (x <= -9223372036854775808.0) return (i64)(-9223372036854775807LL - 1);
        return (i64)x;
    }
    static __device__ __forceinline__ bool is_nan(i64) { return false; }
};

// A tensor's view: `rank` dimensions with element strides, starting `offset` elements in.
#define KILN_MAX_RANK 8
struct Strided {
    u32 rank;
    u32 pad;
    u64 offset;
    u64 dims[KILN_MAX_RANK];
    u64 strides[KILN_MAX_RANK];
};

// Storage index of the `i`-th element in row-major order.
__device__ __forceinline__ u64 strided_index(const Strided& s, u64 i) {
    u64 off = s.offset;
    for (int d = (int)s.rank - 1; d >= 0; --d) {
        u64 n = s.dims[d];
        off += (i % n) * s.strides[d];
        i /= n;
    }
    return off;
}

#define KILN_GRID_LOOP(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)blockDim.x * gridDim.x)

// Instantiate `M(suffix, type)` for every element type.
#define KILN_FOR_ALL_TYPES(M) M(u8, u8) M(u32, u32) M(i64, i64) M(f16, f16) M(bf16, bf16) M(f32, float) M(f64, double)
#define KILN_FOR_FLOAT_TYPES(M) M(f16, f16) M(bf16, bf16) M(f32, float) M(f64, double)
#define KILN_FOR_INT_TYPES(M) M(u8, u8) M(u32, u32) M(i64, i64)
