// Row kernels: one block per row of a (strided) [rows, len] view. Partial results combine in a
// fixed tree order, so a result does not depend on timing. Float sums accumulate in f64, as on
// the CPU.

#define KILN_ROW_THREADS 256

#define RED_SUM 0
#define RED_MAX 1
#define RED_MIN 2
#define RED_ARGMAX 3
#define RED_ARGMIN 4

// The sum accumulator: f64 for floats, wrapping u64 for integers (truncated at the end).
template <typename T> struct SumAcc { typedef double A; };
template <> struct SumAcc<u8> { typedef u64 A; };
template <> struct SumAcc<u32> { typedef u64 A; };
template <> struct SumAcc<i64> { typedef u64 A; };

template <typename T, typename A>
__device__ __forceinline__ A sum_acc(T x);
template <> __device__ __forceinline__ double sum_acc<float, double>(float x) { return x; }
template <> __device__ __forceinline__ double sum_acc<double, double>(double x) { return x; }
template <> __device__ __forceinline__ double sum_acc<f16, double>(f16 x) { return f16_to_f32(x); }
template <> __device__ __forceinline__ double sum_acc<bf16, double>(bf16 x) { return bf16_to_f32(x); }
template <> __device__ __forceinline__ u64 sum_acc<u8, u64>(u8 x) { return x; }
template <> __device__ __forceinline__ u64 sum_acc<u32, u64>(u32 x) { return x; }
template <> __device__ __forceinline__ u64 sum_acc<i64, u64>(i64 x) { return (u64)x; }

// The row's result in T: floats round from f64, integers keep the low bits (wrapping).
template <typename T> __device__ __forceinline__ T sum_result(double a) { return Num<T>::from_f64(a); }
template <typename T> __device__ __forceinline__ T sum_result(u64 a) { return (T)a; }

template <typename T>
__device__ void row_sum(const T* in, Strided s, T* out, u64 rows, u64 len) {
    typedef typename SumAcc<T>::A A;
    __shared__ A part[KILN_ROW_THREADS];
    for (u64 row = blockIdx.x; row < rows; row += gridDim.x) {
        A acc = (A)0;
        for (u64 j = threadIdx.x; j < len; j += blockDim.x) acc += sum_acc<T, A>(in[strided_index(s, row * len + j)]);
        part[threadIdx.x] = acc;
        __syncthreads();
        for (u32 w = blockDim.x / 2; w > 0; w /= 2) {
            if (threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
            __syncthreads();
        }
        if (threadIdx.x == 0) out[row] = sum_result<T>(part[0]);
        __syncthreads();
    }
}

// Max/min with NaN winning; arg variants give the first index of the extreme non-NaN value,
// or 0 when the row starts with NaN (the CPU's sequential scan).
template <typename T>
__device__ void row_extreme(const T* in, Strided s, void* out_raw, u64 rows, u64 len, u32 op) {
    typedef typename Num<T>::C C;
    __shared__ C val[KILN_ROW_THREADS];
    __shared__ u64 idx[KILN_ROW_THREADS];
    __shared__ u8 nan[KILN_ROW_THREADS];
    bool want_max = op == RED_MAX || op == RED_ARGMAX;
    for (u64 row = blockIdx.x; row < rows; row += gridDim.x) {
        C best = (C)0;
        u64 best_i = ~(u64)0;
        u8 saw_nan = 0;
        for (u64 j = threadIdx.x; j < len; j += blockDim.x) {
            T raw = in[strided_index(s, row * len + j)];
            if (Num<T>::is_nan(raw)) { saw_nan = 1; continue; }
            C x = Num<T>::load(raw);
            if (best_i == ~(u64)0 || (want_max ? x > best : x < best)) { best = x; best_i = j; }
        }
        val[threadIdx.x] = best;
        idx[threadIdx.x] = best_i;
        nan[threadIdx.x] = saw_nan;
        __syncthreads();
        for (u32 w = blockDim.x / 2; w > 0; w /= 2) {
            if (threadIdx.x < w) {
                u32 o = threadIdx.x + w;
                nan[threadIdx.x] |= nan[o];
                bool take = idx[o] != ~(u64)0 &&
                            (idx[threadIdx.x] == ~(u64)0 ||
                             (want_max ? val[o] > val[threadIdx.x] : val[o] < val[threadIdx.x]) ||
                             (val[o] == val[threadIdx.x] && idx[o] < idx[threadIdx.x]));
                if (take) { val[threadIdx.x] = val[o]; idx[threadIdx.x] = idx[o]; }
            }
            __syncthreads();
        }
        if (threadIdx.x == 0) {
            if (op == RED_MAX || op == RED_MIN) {
                T* out = (T*)out_raw;
                // A NaN anywhere makes the result NaN.
                out[row] = nan[0] ? Num<T>::from_f64(__longlong_as_double(0x7ff8000000000000LL)) : Num<T>::store(val[0]);
            } else {
                i64* out = (i64*)out_raw;
                bool first_nan = Num<T>::is_nan(in[strided_index(s, row * len)]);
                out[row] = (first_nan || idx[0] == ~(u64)0) ? 0 : (i64)idx[0];
            }
        }
        __syncthreads();
    }
}

#define KILN_REDUCE_FLOAT(S, T)                                                                      \
    extern "C" __global__ void reduce_##S(const T* in, Strided s, void* out, u64 rows, u64 len, u32 op) { \
        if (op == RED_SUM) row_sum<T>(in, s, (T*)out, rows, len);                                  \
        else row_extreme<T>(in, s, out, rows, len, op);                                            \
    }
KILN_FOR_ALL_TYPES(KILN_REDUCE_FLOAT)

// Softmax and log-softmax of each row, in the compute type of T with an f64 sum of exponentials.
template <typename T>
__device__ void row_softmax(const T* in, Strided s, T* out, u64 rows, u64 len, u32 log_out) {
    typedef typename Num<T>::C C;
    __shared__ C mx[KILN_ROW_THREADS];
    __shared__ double sm[KILN_ROW_THREADS];
    for (u64 row = blockIdx.x; row < rows; row += gridDim.x) {
        C m = -(C)1.0 / (C)0.0;
        for (u64 j = threadIdx.x; j < len; j += blockDim.x) m = fmax(m, Num<T>::load(in[strided_index(s, row * len + j)]));
        mx[threadIdx.x] = m;
        __syncthreads();
        for (u32 w = blockDim.x / 2; w > 0; w /= 2) {
            if (threadIdx.x < w) mx[threadIdx.x] = fmax(mx[threadIdx.x], mx[threadIdx.x + w]);
            __syncthreads();
        }
        m = mx[0];
        double acc = 0.0;
        for (u64 j = threadIdx.x; j < len; j += blockDim.x) acc += (double)exp(Num<T>::load(in[strided_index(s, row * len + j)]) - m);
        sm[threadIdx.x] = acc;
        __syncthreads();
        for (u32 w = blockDim.x / 2; w > 0; w /= 2) {
            if (threadIdx.x < w) sm[threadIdx.x] += sm[threadIdx.x + w];
            __syncthreads();
        }
        C total = (C)sm[0];
        C log_total = (C)log(sm[0]);
        for (u64 j = threadIdx.x; j < len; j += blockDim.x) {
            C x = Num<T>::load(in[strided_index(s, row * len + j)]) - m;
            out[row * len + j] = Num<T>::store(log_out ? x - log_total : exp(x) / total);
        }
        __syncthreads();
    }
}
#define KILN_SOFTMAX(S, T)                                                                        \
    extern "C" __global__ void softmax_##S(const T* in, Strided s, T* out, u64 rows, u64 len, u32 log_out) { \
        row_softmax<T>(in, s, out, rows, len, log_out);                                          \
    }
KILN_FOR_FLOAT_TYPES(KILN_SOFTMAX)

// index_select: out[o, j, c] = in[o, ids[j], c] over the (strided) [outer, size, inner] view.
template <typename T>
__device__ void index_select_impl(const T* in, Strided s, const i64* ids, T* out, u64 outer, u64 nids, u64 size, u64 inner) {
    u64 n = outer * nids * inner;
    KILN_GRID_LOOP(i, n) {
        u64 c = i % inner;
        u64 j = (i / inner) % nids;
        u64 o = i / (inner * nids);
        out[i] = in[strided_index(s, (o * size + (u64)ids[j]) * inner + c)];
    }
}
#define KILN_INDEX_SELECT(S, T)                                                                   \
    extern "C" __global__ void index_select_##S(const T* in, Strided s, const i64* ids, T* out, u64 outer, \
                                                u64 nids, u64 size, u64 inner) {                 \
        index_select_impl<T>(in, s, ids, out, outer, nids, size, inner);                         \
    }
KILN_FOR_ALL_TYPES(KILN_INDEX_SELECT)
