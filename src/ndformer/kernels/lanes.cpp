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
        const int32_t* list;  // the tiles to compute
        int64_t count;
    };

    static void tile(const Args& a, int64_t job, vec* qt, vec* s, vec* o) {
        int64_t r = job / a.count, t = a.list[job % a.count];
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
        parallel(rows * a.count, threads, [&a](int64_t begin, int64_t end) {
            std::vector<vec> qt(a.e), s(a.slots), o(a.ev);
            for (int64_t job = begin; job < end; job++) tile(a, job, qt.data(), s.data(), o.data());
        });
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
    static inline void transpose_block(vec* x) {
        if constexpr (VL == 16) transpose_stage<8>(x);
        transpose_stage<4>(x);
        transpose_stage<2>(x);
        transpose_stage<1>(x);
    }

    // out[r, d, t] = x[r, t, d] for x [rows, n, e] and out [rows, e, np], in VL x VL blocks.
    static void transpose(const T* x, T* out, int64_t rows, int64_t n, int64_t e, int64_t np,
                          int threads) {
        constexpr int B = VL;
        int64_t tb = (n + B - 1) / B;
        parallel(rows * tb, threads, [=](int64_t begin, int64_t end) {
            for (int64_t job = begin; job < end; job++) {
                int64_t r = job / tb, t0 = job % tb * B;
                int64_t tn = n - t0 < B ? n - t0 : B;
                const T* src = x + (r * n + t0) * e;
                T* dst = out + r * e * np + t0;
                for (int64_t d0 = 0; d0 < e; d0 += B) {
                    int64_t dn = e - d0 < B ? e - d0 : B;
                    if (tn == B && dn == B) {
                        vec blk[B];
                        for (int t = 0; t < B; t++) blk[t] = load(src + t * e + d0);
                        transpose_block(blk);
                        for (int d = 0; d < B; d++)
                            *(typename S::uvec*)(dst + (d0 + d) * np) = blk[d];
                        continue;
                    }
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

// Stacked tiles (neighborhoods): up to R = 3 tiles of VL lanes whose queries are VL
// consecutive tokens and whose every key slot is one vector load, at a column plus a lane
// index idx[l] shared by the group (the identity inside the grid; a clamp at a border:
// one register permute). Tiles stacked along a grid axis share most key columns: the plan
// lists them as blocks (column, first tile t0, tiles nt, columns nj, each tile's slot of the
// first column), and every key vector a block loads serves its nt tiles from registers.
template <typename T>
struct Stack {
    using K = Kernel<T>;
    using vec = typename K::vec;
    using ivec = typename K::ivec;
    static constexpr int VL = K::VL, R = 3, JMAX = 8, FIELDS = 7;

    struct Args {
        const T *q, *kt, *vt;  // q [rows, n, e]; kt, vt [rows, e | ev, np], column 0 = token 0
        T* out;                // [rows, n, ev]
        int64_t n, np, e, ev;
        const int32_t *tok0, *sig, *perm, *idx, *first, *blocks;
        const int64_t* column;
        int64_t groups, slots;
        T scale;
    };

    // A key (or value) vector, loaded once into a register: the empty asm stops the
    // compiler from folding the load into each tile's FMA (one load per FMA instead of
    // one per NT FMAs).
    template <bool P>
    static inline vec key(const T* p, ivec idx) {
        if constexpr (!P) {
            vec x = K::load(p);
#if defined(__x86_64__)
            asm("" : "+v"(x));
#elif defined(__aarch64__)
            asm("" : "+w"(x));
#endif
            return x;
        } else {
#if !defined(__clang__)
            return __builtin_shuffle(K::load(p), idx);
#else
            vec x;
            for (int l = 0; l < VL; l++) x[l] = p[idx[l]];
            return x;
#endif
        }
    }

    // s[t][slot[t] + j] = q_t . key(column + j) for t < NT, j < J.
    template <int NT, int J, bool P>
    static void scores(const vec* q, int64_t e, const T* col, int64_t np, ivec idx, vec* s,
                       int64_t slots, const int32_t* slot) {
        vec acc[NT][J];
        for (int t = 0; t < NT; t++)
            for (int j = 0; j < J; j++) acc[t][j] = K::splat(0);
        for (int64_t d = 0; d < e; d++) {
            vec qd[NT];
            for (int t = 0; t < NT; t++) qd[t] = q[t * e + d];
            const T* row = col + d * np;
            for (int j = 0; j < J; j++) {
                vec k = key<P>(row + j, idx);
                for (int t = 0; t < NT; t++) acc[t][j] += qd[t] * k;
            }
        }
        for (int t = 0; t < NT; t++)
            for (int j = 0; j < J; j++) s[t * slots + slot[t] + j] = acc[t][j];
    }

    template <int NT, bool P>
    static void scores_nt(int nj, const vec* q, int64_t e, const T* col, int64_t np, ivec idx,
                          vec* s, int64_t slots, const int32_t* slot) {
        switch (nj) {
            case 1: return scores<NT, 1, P>(q, e, col, np, idx, s, slots, slot);
            case 2: return scores<NT, 2, P>(q, e, col, np, idx, s, slots, slot);
            case 3: return scores<NT, 3, P>(q, e, col, np, idx, s, slots, slot);
            case 4: return scores<NT, 4, P>(q, e, col, np, idx, s, slots, slot);
            case 5: return scores<NT, 5, P>(q, e, col, np, idx, s, slots, slot);
            case 6: return scores<NT, 6, P>(q, e, col, np, idx, s, slots, slot);
            case 7: return scores<NT, 7, P>(q, e, col, np, idx, s, slots, slot);
            default: return scores<NT, 8, P>(q, e, col, np, idx, s, slots, slot);
        }
    }

    // acc[T0 + t][c] += sum_j p[T0 + t][slot[t] + j] * value_c(column + j), t < NT, c < CB.
    template <int T0, int NT, int CB, bool P>
    static inline __attribute__((always_inline)) void weigh(vec (&acc)[R][CB], int nj,
                                                            const vec* s, int64_t slots,
                                                            const int32_t* slot, const T* col,
                                                            int64_t np, ivec idx) {
        for (int j = 0; j < nj; j++) {
            vec p[NT];
            for (int t = 0; t < NT; t++) p[t] = s[(T0 + t) * slots + slot[t] + j];
            for (int c = 0; c < CB; c++) {
                vec v = key<P>(col + c * np + j, idx);
                for (int t = 0; t < NT; t++) acc[T0 + t][c] += p[t] * v;
            }
        }
    }

    // o[t * ev + c] = sum over the blocks of weigh, for the CB value channels at vr (V^T
    // rows); the group's R x CB sums stay in registers across its blocks.
    template <int CB, bool P>
    static void weigh_blocks(const Args& a, const int32_t* b, const int32_t* end, int64_t col0,
                             const vec* s, const T* vr, ivec idx, vec* o) {
        vec acc[R][CB];
        for (int t = 0; t < R; t++)
            for (int c = 0; c < CB; c++) acc[t][c] = K::splat(0);
        const int64_t slots = a.slots, np = a.np;
        for (; b < end; b += FIELDS) {
            const T* col = vr + col0 + b[0];
            switch (b[1] * 4 + b[2]) {  // first tile, tiles
                case 1: weigh<0, 1, CB, P>(acc, b[3], s, slots, b + 4, col, np, idx); break;
                case 2: weigh<0, 2, CB, P>(acc, b[3], s, slots, b + 4, col, np, idx); break;
                case 3: weigh<0, 3, CB, P>(acc, b[3], s, slots, b + 4, col, np, idx); break;
                case 5: weigh<1, 1, CB, P>(acc, b[3], s, slots, b + 4, col, np, idx); break;
                case 6: weigh<1, 2, CB, P>(acc, b[3], s, slots, b + 4, col, np, idx); break;
                default: weigh<2, 1, CB, P>(acc, b[3], s, slots, b + 4, col, np, idx);
            }
        }
        for (int t = 0; t < R; t++)
            for (int c = 0; c < CB; c++) o[t * a.ev + c] = acc[t][c];
    }

    template <bool P>
    static void group(const Args& a, int64_t job, vec* q, vec* s, vec* o) {
        const int64_t r = job / a.groups, g = job % a.groups, e = a.e, ev = a.ev, np = a.np;
        const int32_t* tok0 = a.tok0 + g * R;
        const T* qr = a.q + r * a.n * e;
        const T* kr = a.kt + r * e * np;
        const T* vr = a.vt + r * ev * np;
        int nt = 0;
        while (nt < R && tok0[nt] >= 0) nt++;
        if (g + 1 < a.groups)  // the next group's queries (rows apart: no hardware prefetch)
            for (int t = 0; t < R; t++) {
                int64_t next = a.tok0[(g + 1) * R + t];
                if (next < 0) break;
                const char* p = (const char*)(qr + next * e);
                for (int64_t i = 0; i < (int64_t)(VL * e * sizeof(T)); i += 64) __builtin_prefetch(p + i);
            }
        for (int t = 0; t < nt; t++) rows_to_lanes(qr + (int64_t)tok0[t] * e, e, a.scale, q + t * e);
        ivec idx{};
        if constexpr (P)
            for (int l = 0; l < VL; l++) idx[l] = a.idx[(int64_t)a.perm[g] * VL + l];
        const int32_t* b0 = a.blocks + (int64_t)a.first[a.sig[g]] * FIELDS;
        const int32_t* b1 = a.blocks + (int64_t)a.first[a.sig[g] + 1] * FIELDS;
        const int64_t col0 = a.column[g];
        for (const int32_t* b = b0; b < b1; b += FIELDS) {
            const T* col = kr + col0 + b[0];
            const vec* qp = q + b[1] * e;
            vec* sp = s + b[1] * a.slots;
            switch (b[2]) {
                case 1: scores_nt<1, P>(b[3], qp, e, col, np, idx, sp, a.slots, b + 4); break;
                case 2: scores_nt<2, P>(b[3], qp, e, col, np, idx, sp, a.slots, b + 4); break;
                default: scores_nt<3, P>(b[3], qp, e, col, np, idx, sp, a.slots, b + 4);
            }
        }
        vec sum[R];
        for (int t = 0; t < nt; t++) sum[t] = K::softmax(s + t * a.slots, a.slots, 1);
        int64_t c0 = 0;
        for (; c0 + 8 <= ev; c0 += 8) weigh_blocks<8, P>(a, b0, b1, col0, s, vr + c0 * np, idx, o + c0);
        for (; c0 + 4 <= ev; c0 += 4) weigh_blocks<4, P>(a, b0, b1, col0, s, vr + c0 * np, idx, o + c0);
        for (; c0 < ev; c0++) weigh_blocks<1, P>(a, b0, b1, col0, s, vr + c0 * np, idx, o + c0);
        T* outr = a.out + r * a.n * ev;
        for (int t = 0; t < nt; t++)
            lanes_to_rows(o + t * ev, ev, K::splat(1) / sum[t], outr + (int64_t)tok0[t] * ev);
    }

    // out[d][l] = scale * x[l * e + d] for the VL rows of x [VL, e] (VL x VL register
    // transposes, the last e % VL channels one by one).
    static inline void rows_to_lanes(const T* x, int64_t e, T scale, vec* out) {
        int64_t d0 = 0;
        for (; d0 + VL <= e; d0 += VL) {
            vec blk[VL];
            for (int l = 0; l < VL; l++) blk[l] = K::load(x + l * e + d0);
            K::transpose_block(blk);
            for (int d = 0; d < VL; d++) out[d0 + d] = blk[d] * scale;
        }
        for (; d0 < e; d0++) {
            vec v;
            for (int l = 0; l < VL; l++) v[l] = x[l * e + d0];
            out[d0] = v * scale;
        }
    }

    // The inverse for the output: x[l * ev + c] = o[c][l] * inv[l].
    static inline void lanes_to_rows(const vec* o, int64_t ev, vec inv, T* x) {
        int64_t c0 = 0;
        for (; c0 + VL <= ev; c0 += VL) {
            vec blk[VL];
            for (int c = 0; c < VL; c++) blk[c] = o[c0 + c];
            K::transpose_block(blk);
            for (int l = 0; l < VL; l++) *(typename K::S::uvec*)(x + l * ev + c0) = blk[l] * inv[l];
        }
        for (; c0 < ev; c0++)
            for (int l = 0; l < VL; l++) x[l * ev + c0] = o[c0][l] * inv[l];
    }

    static void run(const Args& a, int64_t rows, int threads) {
        K::parallel(rows * a.groups, threads, [&a](int64_t begin, int64_t end) {
            std::vector<vec> q(a.e * R), s(a.slots * R), o(a.ev * R);
            for (int64_t job = begin; job < end; job++) {
                if (a.perm[job % a.groups] >= 0)
                    group<true>(a, job, q.data(), s.data(), o.data());
                else
                    group<false>(a, job, q.data(), s.data(), o.data());
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

// The lane kernels' driver: K and V of each row (batch x head) are transposed into the
// caller's scratch (per worker: [e + ev, np], token t in column VL + t), then the stacked
// tiles and the rest of the plan's tiles run on it. Whole rows go to separate workers when
// there are at least as many rows as threads (one worker's transposes, which wait on
// memory, overlap another's arithmetic); the remaining rows split their tiles over all
// threads.
template <typename T>
void lanes(const T* q, const T* k, const T* v, T* out, T* work, int64_t rows, int64_t n,
           int64_t np, int64_t e, int64_t ev, const int32_t* tokens, const int32_t* kind,
           const int32_t* base, const int32_t* offsets, const int64_t* start, int64_t tiles,
           const int32_t* list, int64_t count, const int32_t* tok0, const int32_t* sig,
           const int32_t* perm, const int32_t* idx, const int32_t* first,
           const int32_t* blocks, const int64_t* column, int64_t groups, int64_t slots,
           double scale, int threads) {
    constexpr int VL = Simd<T>::VL;
    auto row = [=](int64_t r, T* scratch, int inner) {
        T* kt = scratch + VL;
        T* vt = kt + e * np;
        Kernel<T>::transpose(k + r * n * e, kt, 1, n, e, np, inner);
        Kernel<T>::transpose(v + r * n * ev, vt, 1, n, ev, np, inner);
        const T* qr = q + r * n * e;
        T* outr = out + r * n * ev;
        if (groups > 0) {
            typename Stack<T>::Args a{qr,  kt,     vt,     outr,   n,      np,     e,
                                      ev,  tok0,   sig,    perm,   idx,    first,  blocks,
                                      column, groups, slots, (T)scale};
            Stack<T>::run(a, 1, inner);
        }
        if (count > 0) {
            typename Kernel<T>::Args a{qr,    kt,    vt,     outr,    n,     np,
                                       e,     ev,    tokens, kind,    base,  offsets,
                                       start, tiles, slots,  (T)scale, list, count};
            Kernel<T>::run(a, 1, inner);
        }
    };
    int64_t whole = threads > 1 ? rows / threads * threads : 0;
    if (whole > 0)
        Kernel<T>::parallel(threads, threads, [=](int64_t w0, int64_t w1) {
            for (int64_t w = w0; w < w1; w++)
                for (int64_t r = w; r < whole; r += threads) row(r, work + w * (e + ev) * np, 1);
        });
    for (int64_t r = whole; r < rows; r++) row(r, work, threads);
}

}  // namespace

// q, k [rows, n, e], v [rows, n, ev], out [rows, n, ev]; work [max(threads, 1), e + ev, np]
// scratch with np >= n + 3 * VL; the lane plan (tiles `list` [count] of it computed by the
// lane kernel) and the stacked plan (`groups` may be 0) as described above.
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
void ndf_lanes_f32(const float* q, const float* k, const float* v, float* out, float* work,
                   int64_t rows, int64_t n, int64_t np, int64_t e, int64_t ev,
                   const int32_t* tokens, const int32_t* kind, const int32_t* base,
                   const int32_t* offsets, const int64_t* start, int64_t tiles,
                   const int32_t* list, int64_t count, const int32_t* tok0, const int32_t* sig,
                   const int32_t* perm, const int32_t* idx, const int32_t* first,
                   const int32_t* blocks, const int64_t* column, int64_t groups, int64_t slots,
                   double scale, int threads) {
    lanes<float>(q, k, v, out, work, rows, n, np, e, ev, tokens, kind, base, offsets, start,
                 tiles, list, count, tok0, sig, perm, idx, first, blocks, column, groups, slots,
                 scale, threads);
}
void ndf_lanes_f64(const double* q, const double* k, const double* v, double* out,
                   double* work, int64_t rows, int64_t n, int64_t np, int64_t e, int64_t ev,
                   const int32_t* tokens, const int32_t* kind, const int32_t* base,
                   const int32_t* offsets, const int64_t* start, int64_t tiles,
                   const int32_t* list, int64_t count, const int32_t* tok0, const int32_t* sig,
                   const int32_t* perm, const int32_t* idx, const int32_t* first,
                   const int32_t* blocks, const int64_t* column, int64_t groups, int64_t slots,
                   double scale, int threads) {
    lanes<double>(q, k, v, out, work, rows, n, np, e, ev, tokens, kind, base, offsets, start,
                  tiles, list, count, tok0, sig, perm, idx, first, blocks, column, groups,
                  slots, scale, threads);
}
}
