// Convolution as im2col + cuBLAS: unfold the image into columns, and the adjoint (col2im) as a
// gather over the kernel taps that touch each pixel (no atomics, so sums keep a fixed order).

struct ConvArgs {
    u64 n, c, h, w, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, groups;
};

// cols[n][g][k][p] with k = (ci, i, j) over the group's channels and taps, p = (oy, ox).
template <typename T>
__device__ void im2col_impl(const T* x, Strided s, T* cols, ConvArgs a) {
    u64 cig = a.c / a.groups;
    u64 kk = cig * a.kh * a.kw;
    u64 pp = a.oh * a.ow;
    u64 total = a.n * a.groups * kk * pp;
    KILN_GRID_LOOP(idx, total) {
        u64 p = idx % pp;
        u64 k = (idx / pp) % kk;
        u64 g = (idx / (pp * kk)) % a.groups;
        u64 b = idx / (pp * kk * a.groups);
        u64 ox = p % a.ow, oy = p / a.ow;
        u64 j = k % a.kw, i = (k / a.kw) % a.kh, ci = k / (a.kw * a.kh);
        long long y = (long long)(oy * a.sh + i * a.dh) - (long long)a.ph;
        long long xx = (long long)(ox * a.sw + j * a.dw) - (long long)a.pw;
        T v = Num<T>::from_f64(0.0);
        if (y >= 0 && y < (long long)a.h && xx >= 0 && xx < (long long)a.w) {
            u64 c = g * cig + ci;
            v = x[strided_index(s, ((b * a.c + c) * a.h + (u64)y) * a.w + (u64)xx)];
        }
        cols[idx] = v;
    }
}

// out[n][c][y][x] = sum over taps (i, j) of cols[n][g][(ci, i, j)][(oy, ox)] where the tap of
// output (oy, ox) lands on (y, x).
template <typename T>
__device__ void col2im_impl(const T* cols, T* out, ConvArgs a) {
    typedef typename Num<T>::C C;
    u64 cig = a.c / a.groups;
    u64 kk = cig * a.kh * a.kw;
    u64 pp = a.oh * a.ow;
    u64 total = a.n * a.c * a.h * a.w;
    KILN_GRID_LOOP(idx, total) {
        u64 x = idx % a.w;
        u64 y = (idx / a.w) % a.h;
        u64 c = (idx / (a.w * a.h)) % a.c;
        u64 b = idx / (a.w * a.h * a.c);
        u64 g = c / cig, ci = c % cig;
        C acc = (C)0;
        for (u64 i = 0; i < a.kh; ++i) {
            long long ty = (long long)(y + a.ph) - (long long)(i * a.dh);
            if (ty < 0 || ty % (long long)a.sh != 0) continue;
            u64 oy = (u64)ty / a.sh;
            if (oy >= a.oh) continue;
            for (u64 j = 0; j < a.kw; ++j) {
                long long tx = (long long)(x + a.pw) - (long long)(j * a.dw);
                if (tx < 0 || tx % (long long)a.sw != 0) continue;
                u64 ox = (u64)tx / a.sw;
                if (ox >= a.ow) continue;
                u64 k = (ci * a.kh + i) * a.kw + j;
                acc += Num<T>::load(cols[((b * a.groups + g) * kk + k) * pp + oy * a.ow + ox]);
            }
        }
        out[idx] = Num<T>::store(acc);
    }
}

#define KILN_CONV(S, T)                                                                          \
    extern "C" __global__ void im2col_##S(const T* x, Strided s, T* cols, ConvArgs a) {         \
        im2col_impl<T>(x, s, cols, a);                                                          \
    }                                                                                           \
    extern "C" __global__ void col2im_##S(const T* cols, T* out, ConvArgs a) { col2im_impl<T>(cols, out, a); }
KILN_FOR_FLOAT_TYPES(KILN_CONV)

// gather: out[i] = in[src(i) + ids[i] * stride_d], with `s` the input walked at the index's
// shape and the gathered dimension pinned at 0.
template <typename T>
__device__ void gather_impl(const T* in, Strided s, const i64* ids, u64 stride_d, T* out, u64 n) {
    KILN_GRID_LOOP(i, n) { out[i] = in[strided_index(s, i) + (u64)ids[i] * stride_d]; }
}
#define KILN_GATHER(S, T)                                                                         \
    extern "C" __global__ void gather_##S(const T* in, Strided s, const i64* ids, u64 stride_d, T* out, u64 n) { \
        gather_impl<T>(in, s, ids, stride_d, out, n);                                            \
    }
KILN_FOR_ALL_TYPES(KILN_GATHER)

// Max pooling, one thread per output: the first maximum of the window wins, a NaN wins and
// stays; padding never wins. Indices are flat `y * w + x` within the plane.
template <typename T>
__device__ void max_pool_impl(const T* x, Strided s, T* out, i64* idx, ConvArgs a) {
    typedef typename Num<T>::C C;
    u64 total = a.n * a.c * a.oh * a.ow;
    KILN_GRID_LOOP(o, total) {
        u64 ox = o % a.ow, oy = (o / a.ow) % a.oh, plane = o / (a.ow * a.oh);
        C best = (C)0;
        long long best_i = -1;
        bool best_nan = false;
        for (u64 i = 0; i < a.kh; ++i) {
            long long y = (long long)(oy * a.sh + i) - (long long)a.ph;
            if (y < 0 || y >= (long long)a.h) continue;
            for (u64 j = 0; j < a.kw; ++j) {
                long long xx = (long long)(ox * a.sw + j) - (long long)a.pw;
                if (xx < 0 || xx >= (long long)a.w) continue;
                T raw = x[strided_index(s, (plane * a.h + (u64)y) * a.w + (u64)xx)];
                bool nan = Num<T>::is_nan(raw);
                C v = Num<T>::load(raw);
                if (best_i < 0 || (!best_nan && (nan || v > best))) {
                    best = v;
                    best_i = y * (long long)a.w + xx;
                    best_nan = nan;
                }
            }
        }
        out[o] = Num<T>::store(best);
        idx[o] = best_i < 0 ? 0 : best_i;
    }
}

// The max-pool gradient, one thread per plane walking its outputs in order (no atomics, so
// overlapping windows add up in a fixed order).
template <typename T>
__device__ void max_pool_backward_impl(const T* g, const i64* idx, T* out, u64 planes, u64 out_hw, u64 in_hw) {
    typedef typename Num<T>::C C;
    KILN_GRID_LOOP(plane, planes) {
        T* dst = out + plane * in_hw;
        for (u64 k = 0; k < in_hw; ++k) dst[k] = Num<T>::store((C)0);
        for (u64 o = 0; o < out_hw; ++o) {
            u64 at = (u64)idx[plane * out_hw + o];
            dst[at] = Num<T>::store(Num<T>::load(dst[at]) + Num<T>::load(g[plane * out_hw + o]));
        }
    }
}

#define KILN_POOL(S, T)                                                                                 \
    extern "C" __global__ void max_pool_##S(const T* x, Strided s, T* out, i64* idx, ConvArgs a) {     \
        max_pool_impl<T>(x, s, out, idx, a);                                                           \
    }                                                                                                  \
    extern "C" __global__ void max_pool_backward_##S(const T* g, const i64* idx, T* out, u64 planes,   \
                                                     u64 out_hw, u64 in_hw) {                          \
        max_pool_backward_impl<T>(g, idx, out, planes, out_hw, in_hw);                                 \
    }
KILN_FOR_FLOAT_TYPES(KILN_POOL)
