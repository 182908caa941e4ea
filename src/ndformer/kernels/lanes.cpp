// ndformer's native CPU kernels for local attention patterns. Two of them:
//
// 1. The shared-keys kernel (struct Shared, below): windows, stripes, axial attention.
//    All queries of a tile share their keys, read in place from row-major K and V.
//
// 2. The lane kernel (struct Kernel):
// A plan (built in Python, kernels/native.py) groups the queries into tiles of VL
// "lanes" (VL = one SIMD register: 16 floats or 8 doubles) and lists, for every tile,
// the key "slots": slot s of lane l is the s-th key of that lane's query. Each
// (tile, slot) has a kind saying how the keys of its VL lanes lie in the transposed
// key matrix K^T [E, N]:
//   SHIFT  - lane l's key is base + l      (neighborhoods: a vector load)
//   BCAST  - every lane's key is base      (windows, stripes: one broadcast)
//   PERM   - lane l's key is start + off[l], all within 2*VL tokens (borders, dilation:
//            two loads and a permute), off[l] < 0 = no key (masked)
//   GATHER - lane l's key is start + off[l] otherwise (one load per lane)
//   SKIP   - no lane has a key in this slot
// Scores, softmax and the weighted sum of values are computed with the lanes in the
// SIMD register, so no work is spent on pairs the pattern does not allow.
//
// Written with GCC/Clang vector extensions (no intrinsics): the compiler lowers them to
// the widest SIMD the machine has. Compiled once per machine by kernels/native.py.
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <thread>
#include <vector>

namespace {

enum { SKIP = 0, SHIFT = 1, BCAST = 2, PERM = 3, GATHER = 4 };

template <typename T>
struct Simd;
template <>
struct Simd<float> {
    static constexpr int VL = 16;
    typedef float vec __attribute__((vector_size(64)));
    typedef float uvec __attribute__((vector_size(64), aligned(4)));
    typedef int32_t ivec __attribute__((vector_size(64)));
    static constexpr float lo = -87.0f, magic = 12582912.0f;  // 1.5 * 2^23
    static constexpr int shift = 23, bias = 127;
};
template <>
struct Simd<double> {
    static constexpr int VL = 8;
    typedef double vec __attribute__((vector_size(64)));
    typedef double uvec __attribute__((vector_size(64), aligned(8)));
    typedef int64_t ivec __attribute__((vector_size(64)));
    static constexpr double lo = -708.0, magic = 6755399441055744.0;  // 1.5 * 2^52
    static constexpr int shift = 52, bias = 1023;
};

template <typename T>
struct Kernel {
    using S = Simd<T>;
    using vec = typename S::vec;
    using ivec = typename S::ivec;
    static constexpr int VL = S::VL;

    static inline vec load(const T* p) { return *(const typename S::uvec*)p; }
    // x - (+0) == x for every x (unlike x + 0 for x = -0), so this folds to a broadcast.
    static inline vec splat(T x) { return x - vec{}; }

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
        if constexpr (VL == 8) {
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

    // The key vectors of a PERM / GATHER slot for row `row` (already offset to start).
    static inline vec mixed(const T* row, ivec idx, int kind) {
#if !defined(__clang__)  // clang has no variable two-source shuffle builtin: load per lane
        if (kind == PERM) return __builtin_shuffle(load(row), load(row + VL), idx);
#endif
        vec x;
        for (int l = 0; l < VL; l++) x[l] = row[idx[l]];
        return x;
    }

    // Scores of SB consecutive slots of one kind: out[i] = sum_d qt[d] * keys_d(slot i).
    // For PERM / GATHER, base[i] indexes offsets / start, and masked lanes get -inf.
    template <int KIND, int SB>
    static inline void scores(const vec* qt, const T* kt, int64_t np, int64_t e,
                              const int32_t* base, const int32_t* offsets,
                              const int64_t* start, vec* out) {
        vec acc[SB];
        const T* ptr[SB];
        ivec idx[SB];
        for (int i = 0; i < SB; i++) {
            acc[i] = splat(0);
            if constexpr (KIND == SHIFT || KIND == BCAST) {
                ptr[i] = kt + base[i];
            } else {
                ptr[i] = kt + start[base[i]];
                idx[i] = lane_index(offsets + (int64_t)base[i] * VL);
            }
        }
        for (int64_t d = 0; d < e; d++) {
            vec qv = qt[d];
            for (int i = 0; i < SB; i++) {
                const T* row = ptr[i] + d * np;
                if constexpr (KIND == SHIFT)
                    acc[i] += qv * load(row);
                else if constexpr (KIND == BCAST)
                    acc[i] += qv * splat(*row);
                else
                    acc[i] += qv * mixed(row, idx[i], KIND);
            }
        }
        for (int i = 0; i < SB; i++) {
            if constexpr (KIND == PERM || KIND == GATHER) {
                const int32_t* off = offsets + (int64_t)base[i] * VL;
                for (int l = 0; l < VL; l++)
                    if (off[l] < 0) acc[i][l] = -INFINITY;
            }
            out[i] = acc[i];
        }
    }

    // Scores of the run of `run` slots of kind KIND starting here, in blocks; returns how
    // many slots it did.
    template <int KIND>
    static inline int64_t score_run(const vec* qt, const T* kt, int64_t np, int64_t e,
                                    const int32_t* base, const int32_t* offsets,
                                    const int64_t* start, vec* out, int64_t run) {
        if (run >= 8 && KIND != GATHER) {
            scores<KIND, 8>(qt, kt, np, e, base, offsets, start, out);
            return 8;
        }
        if (run >= 4) {
            scores<KIND, 4>(qt, kt, np, e, base, offsets, start, out);
            return 4;
        }
        scores<KIND, 1>(qt, kt, np, e, base, offsets, start, out);
        return 1;
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
    // (the normalisation is left to the output). Lanes with no key at all (padding) stay 0.
    static inline vec softmax(vec* s, int64_t count, int64_t stride) {
        vec mx = s[0];
        for (int64_t i = 1; i < count; i++) mx = s[i * stride] > mx ? s[i * stride] : mx;
        mx = mx == splat(-INFINITY) ? splat(0) : mx;
        vec sum = splat(0);
        for (int64_t i = 0; i < count; i++) {
            s[i * stride] = vexp(s[i * stride] - mx);
            sum += s[i * stride];
        }
        return sum;
    }

    // Lane l's index into a PERM / GATHER slot's loaded keys (0 for a masked lane).
    static inline ivec lane_index(const int32_t* off) {
        ivec idx;
        for (int l = 0; l < VL; l++) idx[l] = off[l] < 0 ? 0 : off[l];
        return idx;
    }

    struct Args;

    // acc[d] += sum over slots of p[slot] * (value channel d of the slot's keys), for DB
    // channels starting at `col` (V^T rows, stride np); runs of one kind stay in registers.
    template <int DB>
    static inline void weigh(const Args& a, const int32_t* kd, const int32_t* bs, const vec* p,
                             const T* col, vec* out) {
        vec acc[DB];
        for (int d = 0; d < DB; d++) acc[d] = out[d];
        const int64_t np = a.np;
        for (int64_t i = 0; i < a.slots;) {
            int k0 = kd[i];
            int64_t j = i + 1;
            while (j < a.slots && kd[j] == k0) j++;
            if (k0 == SHIFT) {
                for (; i < j; i++) {
                    const T* c = col + bs[i];
                    for (int d = 0; d < DB; d++) acc[d] += p[i] * load(c + d * np);
                }
            } else if (k0 == BCAST) {
                for (; i < j; i++) {
                    const T* c = col + bs[i];
                    for (int d = 0; d < DB; d++) acc[d] += p[i] * splat(c[d * np]);
                }
            } else if (k0 == SKIP) {
                i = j;
            } else {
                for (; i < j; i++) {
                    const int32_t* off = a.offsets + (int64_t)bs[i] * VL;
                    const T* c = col + a.start[bs[i]];
                    ivec idx = lane_index(off);
                    for (int d = 0; d < DB; d++) acc[d] += p[i] * mixed(c + d * np, idx, k0);
                }
            }
        }
        for (int d = 0; d < DB; d++) out[d] = acc[d];
    }

    struct Args {
        const T *q, *kt, *vt;
        T* out;
        int64_t n, np, e, ev;
        const int32_t *tokens, *kind, *base, *offsets;
        const int64_t* start;
        int64_t tiles, slots;
        T scale;
    };

    static void tile(const Args& a, int64_t job, vec* qt, vec* s, vec* o) {
        int64_t r = job / a.tiles, t = job % a.tiles;
        const int32_t* tok = a.tokens + t * VL;
        const T* qr = a.q + r * a.n * a.e;
        const T* kr = a.kt + r * a.e * a.np;
        const T* vr = a.vt + r * a.ev * a.np;
        const int32_t* kd = a.kind + t * a.slots;
        const int32_t* bs = a.base + t * a.slots;
        gather(qr, a.e, tok, a.scale, qt, 1);
        for (int64_t j = 0; j < a.slots;) {
            int k0 = kd[j];
            int64_t run = 1;
            while (run < 8 && j + run < a.slots && kd[j + run] == k0) run++;
            const int32_t* b = bs + j;
            switch (k0) {
                case SHIFT:
                    j += score_run<SHIFT>(qt, kr, a.np, a.e, b, a.offsets, a.start, s + j, run);
                    break;
                case BCAST:
                    j += score_run<BCAST>(qt, kr, a.np, a.e, b, a.offsets, a.start, s + j, run);
                    break;
                case PERM:
                    j += score_run<PERM>(qt, kr, a.np, a.e, b, a.offsets, a.start, s + j, run);
                    break;
                case GATHER:
                    j += score_run<GATHER>(qt, kr, a.np, a.e, b, a.offsets, a.start, s + j, run);
                    break;
                default:
                    s[j++] = splat(-INFINITY);
            }
        }
        vec sum = softmax(s, a.slots, 1);
        constexpr int DB = 8;  // value channels held in registers per pass over the slots
        for (int64_t d0 = 0; d0 < a.ev; d0 += DB) {
            int dn = a.ev - d0 < DB ? (int)(a.ev - d0) : DB;
            vec acc[DB];
            for (int i = 0; i < DB; i++) acc[i] = splat(0);
            const T* col = vr + d0 * a.np;
            if (dn == DB)
                weigh<DB>(a, kd, bs, s, col, acc);
            else
                for (int d = 0; d < dn; d++) weigh<1>(a, kd, bs, s, col + d * a.np, acc + d);
            for (int d = 0; d < dn; d++) o[d0 + d] = acc[d];
        }
        vec inv = splat(1) / (sum == splat(0) ? splat(1) : sum);
        scatter(a.out + r * a.n * a.ev, a.ev, tok, o, 1, inv);
    }

    static void run(const Args& a, int64_t rows, int threads) {
        parallel(rows * a.tiles, threads, [&a](int64_t begin, int64_t end) {
            std::vector<vec> qt(a.e), s(a.slots), o(a.ev);
            for (int64_t job = begin; job < end; job++) tile(a, job, qt.data(), s.data(), o.data());
        });
    }

    // out[r, d, t] = x[r, t, d] for x [rows, n, e] and out [rows, e, np], in 16 x 16 blocks.
    static void transpose(const T* x, T* out, int64_t rows, int64_t n, int64_t e, int64_t np,
                          int threads) {
        constexpr int B = 16;
        int64_t tb = (n + B - 1) / B;
        parallel(rows * tb, threads, [=](int64_t begin, int64_t end) {
            for (int64_t job = begin; job < end; job++) {
                int64_t r = job / tb, t0 = job % tb * B;
                int64_t tn = n - t0 < B ? n - t0 : B;
                const T* src = x + (r * n + t0) * e;
                T* dst = out + r * e * np + t0;
                for (int64_t d0 = 0; d0 < e; d0 += B) {
                    int64_t dn = e - d0 < B ? e - d0 : B;
                    for (int64_t d = 0; d < dn; d++)
                        for (int64_t t = 0; t < tn; t++) dst[(d0 + d) * np + t] = src[t * e + d0 + d];
                }
            }
        });
    }

    template <typename F>
    static void parallel(int64_t jobs, int threads, F work) {
        if (threads <= 1 || jobs < 2) {
            work(0, jobs);
            return;
        }
        if (threads > jobs) threads = (int)jobs;
        std::vector<std::thread> pool;
        for (int i = 1; i < threads; i++)
            pool.emplace_back(work, jobs * i / threads, jobs * (i + 1) / threads);
        work(0, jobs / threads);
        for (auto& th : pool) th.join();
    }
};


// Queries that share one key list (windows): up to G = 4 registers of lanes per tile, keys
// read from row-major K and V (no transposes) as broadcasts, scores and the value sum
// register-blocked as G lane vectors x R keys (or R value channels).
template <typename T>
struct Shared {
    using K = Kernel<T>;
    using vec = typename K::vec;
    static constexpr int VL = K::VL, GMAX = 4, R = 4;

    struct Args {
        const T *q, *k, *v;
        T* out;
        int64_t n, e, ev;
        const int32_t *tokens, *keys, *counts;
        int64_t tiles, slots;
        T scale;
    };

    // out[i * G + g] = sum over steps t of a(t, g) * b(t, i), for i < RB: one register
    // block of G lane registers x RB broadcast scalars. The scores (t: channel, i: key)
    // and the value sum (t: key, i: value channel) are both this.
    template <int G, int RB, typename A, typename B>
    static inline void block(vec* out, int64_t steps, A a, B b) {
        vec acc[G][RB];
        for (int g = 0; g < G; g++)
            for (int i = 0; i < RB; i++) acc[g][i] = K::splat(0);
        for (int64_t t = 0; t < steps; t++) {
            vec bv[RB];
            for (int i = 0; i < RB; i++) bv[i] = K::splat(b(t, i));
            for (int g = 0; g < G; g++) {
                vec av = a(t, g);
                for (int i = 0; i < RB; i++) acc[g][i] += av * bv[i];
            }
        }
        for (int i = 0; i < RB; i++)
            for (int g = 0; g < G; g++) out[i * G + g] = acc[g][i];
    }

    template <int G>
    static void tile(const Args& a, int64_t job, vec* qt, vec* s, vec* o) {
        int64_t r = job / a.tiles, t = job % a.tiles;
        const int32_t* tok = a.tokens + t * GMAX * VL;
        const int32_t* key = a.keys + t * a.slots;
        const int64_t count = a.counts[t], e = a.e, ev = a.ev;
        const T* qr = a.q + r * a.n * e;
        const T* kr = a.k + r * a.n * e;
        const T* vr = a.v + r * a.n * ev;
        for (int g = 0; g < G; g++) K::gather(qr, e, tok + g * VL, a.scale, qt + g, G);
        // scores s[j * G + g] = q_g . k_j
        auto query = [qt](int64_t d, int g) { return qt[d * G + g]; };
        int64_t j = 0;
        for (; j + R <= count; j += R) {
            const T* kj[R];
            for (int i = 0; i < R; i++) kj[i] = kr + (int64_t)key[j + i] * e;
            block<G, R>(s + j * G, e, query, [&kj](int64_t d, int i) { return kj[i][d]; });
        }
        for (; j < count; j++) {
            const T* kj = kr + (int64_t)key[j] * e;
            block<G, 1>(s + j * G, e, query, [kj](int64_t d, int) { return kj[d]; });
        }
        vec sum[G];
        for (int g = 0; g < G; g++) sum[g] = K::softmax(s + g, count, G);
        // o[c * G + g] = sum_j p_gj v_j[c]
        auto prob = [s](int64_t i, int g) { return s[i * G + g]; };
        int64_t c0 = 0;
        for (; c0 + R <= ev; c0 += R) {
            const T* vc = vr + c0;
            block<G, R>(o + c0 * G, count, prob,
                        [vc, key, ev](int64_t i, int c) { return vc[(int64_t)key[i] * ev + c]; });
        }
        for (; c0 < ev; c0++) {
            const T* vc = vr + c0;
            block<G, 1>(o + c0 * G, count, prob,
                        [vc, key, ev](int64_t i, int) { return vc[(int64_t)key[i] * ev]; });
        }
        for (int g = 0; g < G; g++)
            K::scatter(a.out + r * a.n * ev, ev, tok + g * VL, o + g, G, K::splat(1) / sum[g]);
    }

    static void run(const Args& a, int64_t rows, int threads) {
        K::parallel(rows * a.tiles, threads, [&a](int64_t begin, int64_t end) {
            std::vector<vec> qt(a.e * GMAX), s(a.slots * GMAX), o(a.ev * GMAX);
            for (int64_t job = begin; job < end; job++) {
                const int32_t* tok = a.tokens + job % a.tiles * GMAX * VL;
                int g = GMAX;
                while (g > 1 && tok[(g - 1) * VL] < 0) g--;
                switch (g) {
                    case 1: tile<1>(a, job, qt.data(), s.data(), o.data()); break;
                    case 2: tile<2>(a, job, qt.data(), s.data(), o.data()); break;
                    case 3: tile<3>(a, job, qt.data(), s.data(), o.data()); break;
                    default: tile<4>(a, job, qt.data(), s.data(), o.data());
                }
            }
        });
    }
};

template <typename T>
void shared(const T* q, const T* k, const T* v, T* out, int64_t rows, int64_t n, int64_t e,
            int64_t ev, const int32_t* tokens, const int32_t* keys, const int32_t* counts,
            int64_t tiles, int64_t slots, double scale, int threads) {
    typename Shared<T>::Args a{q, k, v, out, n, e, ev, tokens, keys, counts, tiles, slots,
                               (T)scale};
    Shared<T>::run(a, rows, threads);
}

template <typename T>
void lanes(const T* q, const T* kt, const T* vt, T* out, int64_t rows, int64_t n, int64_t np,
           int64_t e, int64_t ev, const int32_t* tokens, const int32_t* kind,
           const int32_t* base, const int32_t* offsets, const int64_t* start, int64_t tiles,
           int64_t slots, double scale, int threads) {
    typename Kernel<T>::Args a{q, kt, vt, out, n, np, e, ev, tokens, kind,
                               base, offsets, start, tiles, slots, (T)scale};
    Kernel<T>::run(a, rows, threads);
}

}  // namespace

// q [rows, n, e]; kt [rows, e, np], vt [rows, ev, np] (transposed, np >= n + 2 * VL, the
// padding readable); out [rows, n, ev]; plan arrays as described above.
extern "C" {
int ndf_lanes_vl_f32() { return Simd<float>::VL; }
int ndf_lanes_vl_f64() { return Simd<double>::VL; }
void ndf_transpose_f32(const float* x, float* out, int64_t rows, int64_t n, int64_t e,
                       int64_t np, int threads) {
    Kernel<float>::transpose(x, out, rows, n, e, np, threads);
}
void ndf_transpose_f64(const double* x, double* out, int64_t rows, int64_t n, int64_t e,
                       int64_t np, int threads) {
    Kernel<double>::transpose(x, out, rows, n, e, np, threads);
}
void ndf_shared_f32(const float* q, const float* k, const float* v, float* out, int64_t rows,
                    int64_t n, int64_t e, int64_t ev, const int32_t* tokens,
                    const int32_t* keys, const int32_t* counts, int64_t tiles, int64_t slots,
                    double scale, int threads) {
    shared<float>(q, k, v, out, rows, n, e, ev, tokens, keys, counts, tiles, slots, scale,
                  threads);
}
void ndf_shared_f64(const double* q, const double* k, const double* v, double* out,
                    int64_t rows, int64_t n, int64_t e, int64_t ev, const int32_t* tokens,
                    const int32_t* keys, const int32_t* counts, int64_t tiles, int64_t slots,
                    double scale, int threads) {
    shared<double>(q, k, v, out, rows, n, e, ev, tokens, keys, counts, tiles, slots, scale,
                   threads);
}
void ndf_lanes_f32(const float* q, const float* kt, const float* vt, float* out, int64_t rows,
                   int64_t n, int64_t np, int64_t e, int64_t ev, const int32_t* tokens,
                   const int32_t* kind, const int32_t* base, const int32_t* offsets,
                   const int64_t* start, int64_t tiles, int64_t slots, double scale,
                   int threads) {
    lanes<float>(q, kt, vt, out, rows, n, np, e, ev, tokens, kind, base, offsets, start, tiles,
                 slots, scale, threads);
}
void ndf_lanes_f64(const double* q, const double* kt, const double* vt, double* out,
                   int64_t rows, int64_t n, int64_t np, int64_t e, int64_t ev,
                   const int32_t* tokens, const int32_t* kind, const int32_t* base,
                   const int32_t* offsets, const int64_t* start, int64_t tiles,
                   int64_t slots, double scale, int threads) {
    lanes<double>(q, kt, vt, out, rows, n, np, e, ev, tokens, kind, base, offsets, start,
                  tiles, slots, scale, threads);
}
}
