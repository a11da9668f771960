// Element-wise kernels over strided operands: copies, maps, binary ops with broadcasting (the
// broadcast dimensions have stride 0), comparisons, `where` and casts. Every output is
// contiguous; one thread per element in a grid-stride loop.

template <typename T>
__device__ void copy_strided(const T* in, Strided s, T* out, u64 n) {
    KILN_GRID_LOOP(i, n) { out[i] = in[strided_index(s, i)]; }
}
#define KILN_COPY(S, T) \
    extern "C" __global__ void copy_##S(const T* in, Strided s, T* out, u64 n) { copy_strided<T>(in, s, out, n); }
KILN_FOR_ALL_TYPES(KILN_COPY)

// Map op codes (kept in step with `cuda/ops.rs`).
#define MAP_EXP 0
#define MAP_LOG 1
#define MAP_SQRT 2
#define MAP_RSQRT 3
#define MAP_SIN 4
#define MAP_COS 5
#define MAP_TANH 6
#define MAP_SIGMOID 7
#define MAP_RELU 8
#define MAP_ERF 9
#define MAP_GELU 10
#define MAP_GELU_TANH 11
#define MAP_SILU 12
#define MAP_POWF 13
#define MAP_RECIP 14
#define MAP_SQR 15
#define MAP_AFFINE 16
#define MAP_CLAMP 17
#define MAP_NEG 18
#define MAP_ABS 19

template <typename C>
__device__ __forceinline__ C sigmoid_of(C x) {
    // Branch on the sign so exp never overflows (as the CPU does).
    if (x >= (C)0) return (C)1 / ((C)1 + exp(-x));
    C e = exp(x);
    return e / ((C)1 + e);
}

template <typename C>
__device__ __forceinline__ C float_map(C x, u32 op, double p0, double p1) {
    switch (op) {
    case MAP_EXP: return exp(x);
    case MAP_LOG: return log(x);
    case MAP_SQRT: return sqrt(x);
    case MAP_RSQRT: return (C)1 / sqrt(x);
    case MAP_SIN: return sin(x);
    case MAP_COS: return cos(x);
    case MAP_TANH: return tanh(x);
    case MAP_SIGMOID: return sigmoid_of(x);
    case MAP_RELU: return x > (C)0 ? x : (C)0;
    case MAP_ERF: return (C)erf((double)x);
    case MAP_GELU: return (C)0.5 * x * ((C)1 + erf(x * (C)0.70710678118654752440));
    case MAP_GELU_TANH: {
        C inner = (C)0.79788456080286535588 * (x + (C)0.044715 * x * x * x);
        return (C)0.5 * x * ((C)1 + tanh(inner));
    }
    case MAP_SILU: return x * sigmoid_of(x);
    case MAP_POWF: return pow(x, (C)p0);
    case MAP_RECIP: return (C)1 / x;
    case MAP_SQR: return x * x;
    case MAP_AFFINE: return x * (C)p0 + (C)p1;
    case MAP_CLAMP: return fmin(fmax(x, (C)p0), (C)p1);
    case MAP_NEG: return -x;
    case MAP_ABS: return fabs(x);
    default: return x;
    }
}

template <typename T>
__device__ void map_float(const T* in, Strided s, T* out, u64 n, u32 op, double p0, double p1) {
    typedef typename Num<T>::C C;
    KILN_GRID_LOOP(i, n) {
        C x = Num<T>::load(in[strided_index(s, i)]);
        out[i] = Num<T>::store(float_map<C>(x, op, p0, p1));
    }
}
#define KILN_MAP_FLOAT(S, T)                                                                      \
    extern "C" __global__ void map_##S(const T* in, Strided s, T* out, u64 n, u32 op, double p0, \
                                       double p1) {                                               \
        map_float<T>(in, s, out, n, op, p0, p1);                                                  \
    }
KILN_FOR_FLOAT_TYPES(KILN_MAP_FLOAT)

// Integers support the maps that make sense for them: affine and clamp compute in f64 and
// convert back (saturating), neg wraps, abs of an unsigned value is itself.
template <typename T>
__device__ void map_int(const T* in, Strided s, T* out, u64 n, u32 op, double p0, double p1) {
    KILN_GRID_LOOP(i, n) {
        T x = in[strided_index(s, i)];
        T r = x;
        switch (op) {
        case MAP_AFFINE: r = Num<T>::from_f64((double)x * p0 + p1); break;
        case MAP_CLAMP: r = Num<T>::from_f64(fmin(fmax((double)x, p0), p1)); break;
        case MAP_NEG: r = (T)((u64)0 - (u64)x); break;
        case MAP_ABS: r = Num<T>::to_f64(x) < 0.0 ? (T)((u64)0 - (u64)x) : x; break;
        default: break;
        }
        out[i] = r;
    }
}
#define KILN_MAP_INT(S, T)                                                                        \
    extern "C" __global__ void map_##S(const T* in, Strided s, T* out, u64 n, u32 op, double p0, \
                                       double p1) {                                               \
        map_int<T>(in, s, out, n, op, p0, p1);                                                    \
    }
KILN_FOR_INT_TYPES(KILN_MAP_INT)

// Comparison op codes (as `CmpOp`).
#define CMP_EQ 0
#define CMP_NE 1
#define CMP_LT 2
#define CMP_LE 3
#define CMP_GT 4
#define CMP_GE 5

template <typename C>
__device__ __forceinline__ u8 compare(C a, C b, u32 op) {
    switch (op) {
    case CMP_EQ: return a == b;
    case CMP_NE: return a != b;
    case CMP_LT: return a < b;
    case CMP_LE: return a <= b;
    case CMP_GT: return a > b;
    default: return a >= b;
    }
}

template <typename T>
__device__ void cmp_scalar_impl(const T* in, Strided s, u8* out, u64 n, u32 op, double value) {
    typedef typename Num<T>::C C;
    // The scalar is converted to the tensor's dtype first, as on the CPU.
    C v = Num<T>::load(Num<T>::from_f64(value));
    KILN_GRID_LOOP(i, n) { out[i] = compare<C>(Num<T>::load(in[strided_index(s, i)]), v, op); }
}
#define KILN_CMP_SCALAR(S, T)                                                                         \
    extern "C" __global__ void cmp_scalar_##S(const T* in, Strided s, u8* out, u64 n, u32 op, double v) { \
        cmp_scalar_impl<T>(in, s, out, n, op, v);                                                   \
    }
KILN_FOR_ALL_TYPES(KILN_CMP_SCALAR)

template <typename T>
__device__ void cmp_impl(const T* a, Strided sa, const T* b, Strided sb, u8* out, u64 n, u32 op) {
    typedef typename Num<T>::C C;
    KILN_GRID_LOOP(i, n) {
        out[i] = compare<C>(Num<T>::load(a[strided_index(sa, i)]), Num<T>::load(b[strided_index(sb, i)]), op);
    }
}
#define KILN_CMP(S, T)                                                                            \
    extern "C" __global__ void cmp_##S(const T* a, Strided sa, const T* b, Strided sb, u8* out, \
                                       u64 n, u32 op) {                                          \
        cmp_impl<T>(a, sa, b, sb, out, n, op);                                                   \
    }
KILN_FOR_ALL_TYPES(KILN_CMP)

// Binary op codes (as `BinaryOp`).
#define BIN_ADD 0
#define BIN_SUB 1
#define BIN_MUL 2
#define BIN_DIV 3
#define BIN_POW 4
#define BIN_MAX 5
#define BIN_MIN 6

template <typename C>
__device__ __forceinline__ C float_binary(C a, C b, u32 op) {
    switch (op) {
    case BIN_ADD: return a + b;
    case BIN_SUB: return a - b;
    case BIN_MUL: return a * b;
    case BIN_DIV: return a / b;
    case BIN_POW: return (C)pow((double)a, (double)b);
    // NaN propagates, as in torch.maximum.
    case BIN_MAX: return (a != a || a >= b) ? a : b;
    default: return (a != a || a <= b) ? a : b;
    }
}

// Integer arithmetic wraps; division truncates and a zero divisor gives zero.
template <typename T>
__device__ __forceinline__ T int_binary(T a, T b, u32 op) {
    switch (op) {
    case BIN_ADD: return (T)((u64)a + (u64)b);
    case BIN_SUB: return (T)((u64)a - (u64)b);
    case BIN_MUL: return (T)((u64)a * (u64)b);
    case BIN_DIV:
        if (b == (T)0) return (T)0;
        if ((T)-1 < (T)0 && b == (T)-1) return (T)((u64)0 - (u64)a);
        return a / b;
    case BIN_POW: return Num<T>::from_f64(pow((double)a, (double)b));
    case BIN_MAX: return a >= b ? a : b;
    default: return a <= b ? a : b;
    }
}

template <typename T>
__device__ void binary_float(const T* a, Strided sa, const T* b, Strided sb, T* out, u64 n, u32 op) {
    typedef typename Num<T>::C C;
    KILN_GRID_LOOP(i, n) {
        C x = Num<T>::load(a[strided_index(sa, i)]);
        C y = Num<T>::load(b[strided_index(sb, i)]);
        out[i] = Num<T>::store(float_binary<C>(x, y, op));
    }
}
template <typename T>
__device__ void binary_int(const T* a, Strided sa, const T* b, Strided sb, T* out, u64 n, u32 op) {
    KILN_GRID_LOOP(i, n) { out[i] = int_binary<T>(a[strided_index(sa, i)], b[strided_index(sb, i)], op); }
}
#define KILN_BINARY_FLOAT(S, T)                                                                   \
    extern "C" __global__ void binary_##S(const T* a, Strided sa, const T* b, Strided sb, T* out, \
                                          u64 n, u32 op) {                                       \
        binary_float<T>(a, sa, b, sb, out, n, op);                                               \
    }
#define KILN_BINARY_INT(S, T)                                                                     \
    extern "C" __global__ void binary_##S(const T* a, Strided sa, const T* b, Strided sb, T* out, \
                                          u64 n, u32 op) {                                       \
        binary_int<T>(a, sa, b, sb, out, n, op);                                                 \
    }
KILN_FOR_FLOAT_TYPES(KILN_BINARY_FLOAT)
KILN_FOR_INT_TYPES(KILN_BINARY_INT)

template <typename T>
__device__ void where_impl(const u8* m, Strided sm, const T* a, Strided sa, const T* b, Strided sb, T* out, u64 n) {
    KILN_GRID_LOOP(i, n) { out[i] = m[strided_index(sm, i)] ? a[strided_index(sa, i)] : b[strided_index(sb, i)]; }
}
#define KILN_WHERE(S, T)                                                                          \
    extern "C" __global__ void where_##S(const u8* m, Strided sm, const T* a, Strided sa, const T* b, \
                                         Strided sb, T* out, u64 n) {                            \
        where_impl<T>(m, sm, a, sa, b, sb, out, n);                                              \
    }
KILN_FOR_ALL_TYPES(KILN_WHERE)

// Casts go through f64, which holds every value of every dtype exactly (but huge i64s); f32 to
// and from the half types round once, as on the CPU.
template <typename S, typename D>
__device__ void cast_impl(const S* in, Strided s, D* out, u64 n) {
    KILN_GRID_LOOP(i, n) { out[i] = Num<D>::from_f64(Num<S>::to_f64(in[strided_index(s, i)])); }
}
#define KILN_CAST_TO(SS, ST, DS, DT)                                                              \
    extern "C" __global__ void cast_##SS##_##DS(const ST* in, Strided s, DT* out, u64 n) {       \
        cast_impl<ST, DT>(in, s, out, n);                                                        \
    }
#define KILN_CAST_FROM(SS, ST)     \
    KILN_CAST_TO(SS, ST, u8, u8)   \
    KILN_CAST_TO(SS, ST, u32, u32) \
    KILN_CAST_TO(SS, ST, i64, i64) \
    KILN_CAST_TO(SS, ST, f16, f16) \
    KILN_CAST_TO(SS, ST, bf16, bf16) \
    KILN_CAST_TO(SS, ST, f32, float) \
    KILN_CAST_TO(SS, ST, f64, double)
KILN_FOR_ALL_TYPES(KILN_CAST_FROM)

// Copy a strided view into a strided region of a larger output (one part of a `cat`).
template <typename T>
__device__ void copy_into_impl(const T* in, Strided s, T* out, Strided so, u64 n) {
    KILN_GRID_LOOP(i, n) { out[strided_index(so, i)] = in[strided_index(s, i)]; }
}
#define KILN_COPY_INTO(S, T)                                                                      \
    extern "C" __global__ void copy_into_##S(const T* in, Strided s, T* out, Strided so, u64 n) { \
        copy_into_impl<T>(in, s, out, so, n);                                                    \
    }
KILN_FOR_ALL_TYPES(KILN_COPY_INTO)
