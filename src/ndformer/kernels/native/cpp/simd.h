// SIMD vectors and the helpers every native kernel shares: loads and stores, exp, register
// transposes, lanes <-> rows, threads. Written with GCC/Clang vector extensions (no
// intrinsics): the compiler lowers them to the widest SIMD the machine has.
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace ndf {

// One SIMD register of the target: 64 bytes with AVX-512, 32 with AVX / AVX2, else 16
// (SSE, NEON). Kernels size their register blocks from VL and REGISTERS. NDF_VECTOR_BYTES
// and NDF_REGISTERS override both, so that one machine can run every other target's
// blocking (the compiler splits wider vectors into the registers it has).
#if defined(NDF_VECTOR_BYTES) && defined(NDF_REGISTERS)
constexpr int VECTOR_BYTES = NDF_VECTOR_BYTES, REGISTERS = NDF_REGISTERS;
#elif defined(__AVX512F__)
constexpr int VECTOR_BYTES = 64, REGISTERS = 32;
#elif defined(__AVX__)
constexpr int VECTOR_BYTES = 32, REGISTERS = 16;
#elif defined(__aarch64__)
constexpr int VECTOR_BYTES = 16, REGISTERS = 32;
#else
constexpr int VECTOR_BYTES = 16, REGISTERS = 16;
#endif
constexpr bool WIDE = REGISTERS >= 32;  // register blocks twice as large

template <typename T>
struct Simd;
template <>
struct Simd<float> {
    static constexpr int VL = VECTOR_BYTES / 4;
    typedef float vec __attribute__((vector_size(VECTOR_BYTES)));
    typedef float uvec __attribute__((vector_size(VECTOR_BYTES), aligned(4)));
    typedef int32_t ivec __attribute__((vector_size(VECTOR_BYTES)));
    static constexpr float lo = -87.0f, magic = 12582912.0f;  // 1.5 * 2^23
    static constexpr int shift = 23, bias = 127;
};
template <>
struct Simd<double> {
    static constexpr int VL = VECTOR_BYTES / 8;
    typedef double vec __attribute__((vector_size(VECTOR_BYTES)));
    typedef double uvec __attribute__((vector_size(VECTOR_BYTES), aligned(8)));
    typedef int64_t ivec __attribute__((vector_size(VECTOR_BYTES)));
    static constexpr double lo = -708.0, magic = 6755399441055744.0;  // 1.5 * 2^52
    static constexpr int shift = 52, bias = 1023;
};

// Threads: OpenMP, so that inside torch (same runtime, same thread team) the kernels take
// the threads torch's own operators use and `torch.set_num_threads` governs them.
inline int thread_index() {
#if defined(_OPENMP)
    return omp_get_thread_num();
#else
    return 0;
#endif
}

// work(begin, end) over [0, jobs) split into `threads` static ranges, one per thread.
template <typename F>
inline void parallel(int64_t jobs, int threads, F work) {
    if (threads <= 1 || jobs < 2) {
        work(0, jobs);
        return;
    }
    if (threads > jobs) threads = (int)jobs;
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads)
    {
        int t = omp_get_thread_num(), count = omp_get_num_threads();
        work(jobs * t / count, jobs * (t + 1) / count);
    }
#else
    work(0, jobs);
#endif
}

template <typename T>
struct Ops {
    using S = Simd<T>;
    using vec = typename S::vec;
    using uvec = typename S::uvec;
    using ivec = typename S::ivec;
    static constexpr int VL = S::VL;

    static inline vec load(const T* p) { return *(const uvec*)p; }
    static inline void store(T* p, vec x) { *(uvec*)p = x; }
    static inline void add_to(T* p, vec x) { *(uvec*)p = *(const uvec*)p + x; }
    // x - (+0) == x for every x (unlike x + 0 for x = -0), so this folds to a broadcast.
    static inline vec splat(T x) { return x - vec{}; }
    // The first m lanes of p (the others `fill`).
    static inline vec load_n(const T* p, int m, T fill) {
        if (m == VL) return load(p);
        vec x = splat(fill);
        for (int l = 0; l < m; l++) x[l] = p[l];
        return x;
    }
    static inline T hsum(vec x) {
        T s = 0;
        for (int l = 0; l < VL; l++) s += x[l];
        return s;
    }
    // x[idx[l]] in lane l (idx in [0, VL)).
    static inline vec permute(vec x, ivec idx) {
#if !defined(__clang__)
        return __builtin_shuffle(x, idx);
#else
        vec y;
        for (int l = 0; l < VL; l++) y[l] = x[idx[l]];
        return y;
#endif
    }

    // exp(x) for x <= 0: 2^n * p(r) with |r| <= ln2/2; Taylor terms to float / double
    // precision; x below the smallest normal's log gives 0 (and -inf gives 0).
    static inline vec vexp(vec x) {
        const T log2e = 1.4426950408889634, ln2_hi = 0.693145751953125,
                ln2_lo = 1.42860682030941723212e-6;
        auto dead = x < S::lo;
        x = dead ? splat(S::lo) : x;
        vec n = (x * log2e + S::magic) - S::magic;
        vec r = x - n * ln2_hi - n * ln2_lo;
        vec p;
        if constexpr (sizeof(T) == 8) {
            p = splat(1.0 / 479001600);
            const T c[] = {1.0 / 39916800, 1.0 / 3628800, 1.0 / 362880, 1.0 / 40320,
                           1.0 / 5040,     1.0 / 720,     1.0 / 120,    1.0 / 24,
                           1.0 / 6,        0.5,           1.0,          1.0};
            for (T ci : c) p = p * r + ci;
        } else {
            p = splat(1.0f / 5040);
            const T c[] = {1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f};
            for (T ci : c) p = p * r + ci;
        }
        ivec e = (__builtin_convertvector(n, ivec) + S::bias) << S::shift;
        vec two_n;
        memcpy(&two_n, &e, sizeof(vec));
        return dead ? splat(0) : p * two_n;
    }

    // The lanes' query rows as registers: out[d * stride] = scale * x[tok[l], d] in lane l
    // (0 for padding lanes, tok < 0); x is [n, e] row-major.
    static inline void gather(const T* x, int64_t e, const int32_t* tok, T scale, vec* out,
                              int64_t stride) {
        for (int64_t d = 0; d < e; d++) {
            vec v = splat(0);
            for (int l = 0; l < VL; l++) v[l] = tok[l] >= 0 ? x[(int64_t)tok[l] * e + d] : 0;
            out[d * stride] = v * scale;
        }
    }

    // One value per lane from a per-token array (lse, delta): x[tok[l]], `fill` for padding.
    static inline vec gather1(const T* x, const int32_t* tok, T fill) {
        vec v = splat(fill);
        for (int l = 0; l < VL; l++)
            if (tok[l] >= 0) v[l] = x[tok[l]];
        return v;
    }

    // The inverse for the output: x[tok[l], c] = o[c * stride][l] * inv[l] for real lanes.
    static inline void scatter(T* x, int64_t ev, const int32_t* tok, const vec* o,
                               int64_t stride, vec inv) {
        for (int l = 0; l < VL; l++) {
            if (tok[l] < 0) continue;
            T* dst = x + (int64_t)tok[l] * ev;
            for (int64_t c = 0; c < ev; c++) dst[c] = o[c * stride][l] * inv[l];
        }
    }

    // s[i * stride] <- exp(s[i * stride] - max) for i < count, per lane; returns the sums
    // (the normalisation is left to the output) and the maxima in `mx`. Lanes with no key
    // at all (padding) stay 0.
    static inline vec softmax(vec* s, int64_t count, int64_t stride, vec& mx) {
        mx = s[0];
        for (int64_t i = 1; i < count; i++) mx = s[i * stride] > mx ? s[i * stride] : mx;
        mx = mx == splat(-INFINITY) ? splat(0) : mx;
        vec sum = splat(0);
        for (int64_t i = 0; i < count; i++) {
            s[i * stride] = vexp(s[i * stride] - mx);
            sum += s[i * stride];
        }
        return sum;
    }

    // The log-sum-exp of a row from softmax's maxima and sums (+inf without any key, so
    // that the backward's exp(s - lse) is 0 there).
    static inline vec lse(vec mx, vec sum) {
        vec out;
        for (int l = 0; l < VL; l++) out[l] = sum[l] > 0 ? mx[l] + log(sum[l]) : INFINITY;
        return out;
    }

    // One stage of the register transpose: swaps the off-diagonal H x H blocks of every
    // 2H x 2H block of x.
    template <int H>
    static inline void transpose_stage(vec* x) {
#if !defined(__clang__)
        ivec lo, hi;
        for (int l = 0; l < VL; l++) {
            lo[l] = (l & H) ? VL + l - H : l;
            hi[l] = (l & H) ? VL + l : l + H;
        }
#pragma GCC unroll 16
        for (int i = 0; i < VL; i++) {
            if (i & H) continue;
            vec a = x[i], b = x[i + H];
            x[i] = __builtin_shuffle(a, b, lo);
            x[i + H] = __builtin_shuffle(a, b, hi);
        }
#else
        for (int i = 0; i < VL; i++)
            for (int l = 0; l < VL; l++)
                if ((l & H) && !(i & H)) {
                    T t = x[i][l];
                    x[i][l] = x[i + H][l - H];
                    x[i + H][l - H] = t;
                }
#endif
    }

    // Transposes VL x VL values in registers: x[i][l] <-> x[l][i].
    template <int H = VL / 2>
    static inline void transpose_block(vec* x) {
        transpose_stage<H>(x);
        if constexpr (H > 1) transpose_block<H / 2>(x);
    }

    // out[d, t] = x[t, d] for x [n, e] and out [e, np], VL tokens at a time (the last
    // block also writes zeros to the VL - n % VL columns past n: np >= n + VL).
    static void transpose(const T* x, T* out, int64_t n, int64_t e, int64_t np) {
        for (int64_t t0 = 0; t0 < n; t0 += VL) {
            const int m = n - t0 < VL ? (int)(n - t0) : VL;
            const T* rows = x + t0 * e;
            int64_t d0 = 0;
            for (; d0 + VL <= e; d0 += VL) {
                vec blk[VL];
                for (int l = 0; l < VL; l++) blk[l] = l < m ? load(rows + l * e + d0) : splat(0);
                transpose_block(blk);
                for (int d = 0; d < VL; d++) store(out + (d0 + d) * np + t0, blk[d]);
            }
            for (; d0 < e; d0++) {
                vec v = splat(0);
                for (int l = 0; l < m; l++) v[l] = rows[l * e + d0];
                store(out + d0 * np + t0, v);
            }
        }
    }

    // The inverse, accumulated: x[t, d] += xt[d, t] for the n tokens of xt [e, np] (and,
    // with `more` = the scratch of other workers, spaced `step` apart, their sums too);
    // x[t, d] = ... when not `add`.
    static void transpose_add(const T* xt, T* x, int64_t n, int64_t e, int64_t np, int more = 0,
                              int64_t step = 0, bool add = true) {
        for (int64_t t0 = 0; t0 < n; t0 += VL) {
            const int m = n - t0 < VL ? (int)(n - t0) : VL;
            T* rows = x + t0 * e;
            int64_t d0 = 0;
            auto column = [&](int64_t d) {
                vec sum = load(xt + d * np + t0);
                for (int w = 1; w <= more; w++) sum += load(xt + w * step + d * np + t0);
                return sum;
            };
            for (; d0 + VL <= e; d0 += VL) {
                vec blk[VL];
                for (int d = 0; d < VL; d++) blk[d] = column(d0 + d);
                transpose_block(blk);
                for (int l = 0; l < m; l++) {
                    if (add)
                        add_to(rows + l * e + d0, blk[l]);
                    else
                        store(rows + l * e + d0, blk[l]);
                }
            }
            for (; d0 < e; d0++) {
                vec v = column(d0);
                for (int l = 0; l < m; l++) rows[l * e + d0] = (add ? rows[l * e + d0] : 0) + v[l];
            }
        }
    }

    // out[d][l] = scale * x[l * e + d] for the first m <= VL rows of x [m, e] (0 in the
    // other lanes): VL x VL register transposes, the last e % VL channels one by one.
    static inline void rows_to_lanes(const T* x, int64_t e, T scale, vec* out, int m) {
        int64_t d0 = 0;
        for (; d0 + VL <= e; d0 += VL) {
            vec blk[VL];
            for (int l = 0; l < VL; l++) blk[l] = l < m ? load(x + l * e + d0) : splat(0);
            transpose_block(blk);
            for (int d = 0; d < VL; d++) out[d0 + d] = blk[d] * scale;
        }
        for (; d0 < e; d0++) {
            vec v = splat(0);
            for (int l = 0; l < m; l++) v[l] = x[l * e + d0];
            out[d0] = v * scale;
        }
    }

    // The inverse for the output: x[l * ev + c] = o[c][l] * inv[l] for the first m lanes
    // (added to x when `add`).
    static inline void lanes_to_rows(const vec* o, int64_t ev, vec inv, T* x, int m,
                                     bool add = false) {
        int64_t c0 = 0;
        for (; c0 + VL <= ev; c0 += VL) {
            vec blk[VL];
            for (int c = 0; c < VL; c++) blk[c] = o[c0 + c];
            transpose_block(blk);
            for (int l = 0; l < m; l++) {
                vec y = blk[l] * inv[l];
                if (add)
                    add_to(x + l * ev + c0, y);
                else
                    store(x + l * ev + c0, y);
            }
        }
        for (; c0 < ev; c0++)
            for (int l = 0; l < m; l++) {
                T y = o[c0][l] * inv[l];
                x[l * ev + c0] = add ? x[l * ev + c0] + y : y;
            }
    }
};

}  // namespace ndf
