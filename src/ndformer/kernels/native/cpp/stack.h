#pragma once
#include <type_traits>

#include "abi.h"
#include "lanes.h"
#include "simd.h"

namespace ndf {

#ifndef NDF_STACK
#define NDF_STACK 6
#endif
#ifndef NDF_COLUMNS
#define NDF_COLUMNS 8
#endif

// Stacked tiles (neighborhoods): up to R tiles of VL lanes whose queries are m <= VL
// consecutive tokens (lanes m.. idle) and whose every key slot is one vector load, at a
// column plus a lane index idx[l] shared by the group (the identity inside the grid; a
// clamp at a border: one register permute). Tiles stacked along the grid share most key
// columns: the plan lists them as blocks (column, first tile t0, tiles nt, columns
// nj <= COLUMNS, each tile's slot of the first column), and every key vector a block
// loads serves its nt tiles from registers (more tiles per group: more FMAs per load).
//
// The backward recomputes the scores and probabilities from the saved log-sum-exp and
// adds dK^T and dV^T a key vector at a time (nt tiles' contributions summed in registers
// first). Where idx is a clamp, several lanes share a key: the vector is folded (its
// duplicate lanes added into the lane that owns the key, `fold` layers of permutes) and
// added at the column shifted by `shift`.
template <typename T>
struct Stack {
    using K = Ops<T>;
    using vec = typename K::vec;
    using ivec = typename K::ivec;
    static constexpr int VL = K::VL, R = NDF_STACK, FIELDS = 4 + R, COLUMNS = NDF_COLUMNS;
    static constexpr int FOLDS = 8;             // duplicate-lane layers of a fold (at most)
    static constexpr int ACC = REGISTERS - 4;   // accumulator registers of a register block
#ifdef NDF_CB
    static constexpr int CB = NDF_CB;
#else
    static constexpr int CB = ACC / R > 0 ? ACC / R : 1;  // value channels per block
#endif
    // key columns of a score block for nt tiles
    template <int NT>
    static constexpr int J = ACC / NT < 1 ? 1 : (ACC / NT > COLUMNS ? COLUMNS : ACC / NT);

    // f(integral_constant<N>) for the runtime n in [1, LIMIT].
    template <int LIMIT, int N = 1, typename F>
    static inline void by_count(int n, F&& f) {
        if constexpr (N < LIMIT) {
            if (n != N) return by_count<LIMIT, N + 1>(n, f);
        }
        f(std::integral_constant<int, N>{});
    }

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
            return K::permute(K::load(p), idx);
        }
    }

    // s[t][slot[t] + j] = x_t . key(column + j) for t < NT, j < JW (x [NT, width] lanes).
    template <int NT, int JW, bool P>
    static inline void scores(const vec* x, int64_t width, const T* col, int64_t np, ivec idx,
                              vec* s, int64_t slots, const int32_t* slot) {
        vec acc[NT][JW];
        for (int t = 0; t < NT; t++)
            for (int j = 0; j < JW; j++) acc[t][j] = K::splat(0);
        for (int64_t d = 0; d < width; d++) {
            const T* row = col + d * np;
            for (int j = 0; j < JW; j++) {
                vec k = key<P>(row + j, idx);
                for (int t = 0; t < NT; t++) acc[t][j] += x[t * width + d] * k;
            }
        }
        for (int t = 0; t < NT; t++)
            for (int j = 0; j < JW; j++) s[t * slots + slot[t] + j] = acc[t][j];
    }

    // The nj columns of a block, J<NT> at a time.
    template <int NT, bool P>
    static void scores_block(int nj, const vec* x, int64_t width, const T* col, int64_t np,
                             ivec idx, vec* s, int64_t slots, const int32_t* slot) {
        constexpr int JW = J<NT>;
        int j = 0;
        int32_t at[NT];
        for (; j + JW <= nj; j += JW) {
            for (int t = 0; t < NT; t++) at[t] = slot[t] + j;
            scores<NT, JW, P>(x, width, col + j, np, idx, s, slots, at);
        }
        if (j < nj) {
            for (int t = 0; t < NT; t++) at[t] = slot[t] + j;
            by_count<JW>(nj - j, [&](auto rest) {
                scores<NT, decltype(rest)::value, P>(x, width, col + j, np, idx, s, slots, at);
            });
        }
    }

    // Scores of every block of a group against xt (K^T or V^T) for lanes x [R, width].
    template <bool P>
    static void all_scores(const int32_t* b0, const int32_t* b1, const vec* x, int64_t width,
                           const T* xt, int64_t col0, int64_t np, ivec idx, vec* s, int64_t slots) {
        for (const int32_t* b = b0; b < b1; b += FIELDS) {
            const T* col = xt + col0 + b[0];
            const vec* xp = x + b[1] * width;
            vec* sp = s + b[1] * slots;
            by_count<R>(b[2], [&](auto nt) {
                scores_block<decltype(nt)::value, P>(b[3], xp, width, col, np, idx, sp, slots,
                                                     b + 4);
            });
        }
    }

    // acc[T0 + t][c] += sum_j w[T0 + t][slot[t] + j] * value_c(column + j), t < NT, c < CW.
    template <int T0, int NT, int CW, bool P>
    static inline __attribute__((always_inline)) void weigh(vec (&acc)[R][CB], int nj,
                                                            const vec* w, int64_t slots,
                                                            const int32_t* slot, const T* col,
                                                            int64_t np, ivec idx) {
        for (int j = 0; j < nj; j++) {
            vec p[NT];
            for (int t = 0; t < NT; t++) p[t] = w[(T0 + t) * slots + slot[t] + j];
            for (int c = 0; c < CW; c++) {
                vec v = key<P>(col + c * np + j, idx);
                for (int t = 0; t < NT; t++) acc[T0 + t][c] += p[t] * v;
            }
        }
    }

    // o[t * width + c] = sum over the blocks of w * (channel c of xt), for the CW channels
    // at xr (rows of K^T or V^T); the group's R x CW sums stay in registers across blocks.
    template <int CW, bool P>
    static void weigh_blocks(const int32_t* b, const int32_t* end, int64_t col0, int64_t np,
                             int64_t slots, const vec* w, const T* xr, ivec idx, vec* o,
                             int64_t width) {
        vec acc[R][CB];
        for (int t = 0; t < R; t++)
            for (int c = 0; c < CW; c++) acc[t][c] = K::splat(0);
        for (; b < end; b += FIELDS) {
            const T* col = xr + col0 + b[0];
            const int nj = b[3];
            const int32_t* slot = b + 4;
            by_count<R>(b[1] + 1, [&](auto first) {  // first tile + 1
                constexpr int T0 = decltype(first)::value - 1;
                by_count<R - T0>(b[2], [&](auto nt) {
                    weigh<T0, decltype(nt)::value, CW, P>(acc, nj, w, slots, slot, col, np, idx);
                });
            });
        }
        for (int t = 0; t < R; t++)
            for (int c = 0; c < CW; c++) o[t * width + c] = acc[t][c];
    }

    // o[t * width + c] for every channel c < width, in blocks of CB channels, then 1.
    template <bool P>
    static void weigh_all(const int32_t* b0, const int32_t* b1, int64_t col0, int64_t np,
                          int64_t slots, const vec* w, const T* xt, ivec idx, vec* o,
                          int64_t width) {
        int64_t c0 = 0;
        for (; c0 + CB <= width; c0 += CB)
            weigh_blocks<CB, P>(b0, b1, col0, np, slots, w, xt + c0 * np, idx, o + c0, width);
        for (; c0 < width; c0++)
            weigh_blocks<1, P>(b0, b1, col0, np, slots, w, xt + c0 * np, idx, o + c0, width);
    }

    // The fold of a permuted vector back onto keys: y[l] = sum of x over the lanes whose
    // key is the l-th from the shifted column (f: [FOLDS + 1] layers of VL lane sources,
    // layer 0 the lanes that own a key, -1 = none).
    struct Fold {
        vec mask[FOLDS + 1];
        ivec src[FOLDS + 1];
        int layers;
    };
    static Fold make_fold(const int32_t* f) {
        Fold out;
        out.layers = 0;
        for (int m = 0; m <= FOLDS; m++) {
            bool any = false;
            for (int l = 0; l < VL; l++) {
                int s = f[m * VL + l];
                out.src[m][l] = s < 0 ? 0 : s;
                out.mask[m][l] = s < 0 ? 0 : 1;
                any |= s >= 0;
            }
            if (any) out.layers = m + 1;
        }
        return out;
    }
    static inline vec fold(vec x, const Fold& f) {
        vec y = x * f.mask[0];  // layer 0 is the identity on the lanes that own their key
        for (int m = 1; m < f.layers; m++) y += K::permute(x, f.src[m]) * f.mask[m];
        return y;
    }

    // xt[c][column + j + shift] += sum_t w[t][slot[t] + j] * x[t][c] (folded when P) for
    // j < nj, c < width: the transpose of weigh. Column by column, every channel in turn:
    // consecutive adds go to different rows, so an add never waits for the store of the
    // overlapping vector just before it (column j + 1 overlaps column j in VL - 1 lanes).
    template <int NT, bool P>
    static inline void scatter_block(int nj, const vec* w, int64_t slots, const int32_t* slot,
                                     const vec* x, int64_t width, T* col, int64_t np,
                                     const Fold& f) {
        for (int j = 0; j < nj; j++) {
            vec wt[NT];
            for (int t = 0; t < NT; t++) wt[t] = w[t * slots + slot[t] + j];
            T* row = col + j;
            for (int64_t c = 0; c < width; c++) {
                if constexpr (P) {
                    vec sum = wt[0] * x[c];
                    for (int t = 1; t < NT; t++) sum += wt[t] * x[t * width + c];
                    K::add_to(row + c * np, fold(sum, f));
                } else {
                    vec acc = K::load(row + c * np);
                    for (int t = 0; t < NT; t++) acc += wt[t] * x[t * width + c];
                    K::store(row + c * np, acc);
                }
            }
        }
    }

    // Every block's share of xt += w^T x (dK^T from dS and q, dV^T from P and dO).
    template <bool P>
    static void scatter_all(const int32_t* b0, const int32_t* b1, const vec* w, int64_t slots,
                            const vec* x, int64_t width, T* xt, int64_t col0, int64_t np,
                            const Fold& f) {
        for (const int32_t* b = b0; b < b1; b += FIELDS) {
            T* col = xt + col0 + b[0];
            const vec* wp = w + b[1] * slots;
            const vec* xp = x + b[1] * width;
            by_count<R>(b[2], [&](auto nt) {
                scatter_block<decltype(nt)::value, P>(b[3], wp, slots, b + 4, xp, width, col, np, f);
            });
        }
    }

    struct Work {
        std::vector<vec> q, g, s, dp, o;
        Work(int64_t e, int64_t ev, int64_t slots, bool backward)
            : q(e * R), g(backward ? ev * R : 0), s(slots * R), dp(backward ? slots * R : 0),
              o((e > ev ? e : ev) * R) {}
    };

    static int tiles_of(const int32_t* tok0) {
        int nt = 0;
        while (nt < R && tok0[nt] >= 0) nt++;
        return nt;
    }

    // Group g of the chunk's groups: queries to lanes, scores block by block, softmax, the
    // value sums, outputs back to rows.
    template <bool P>
    static void group(const Row<T>& a, const NdfStack& p, int64_t slots, int64_t g, Work& w) {
        const int64_t e = a.e, ev = a.ev, np = a.np;
        const int32_t* tok0 = p.tok0 + g * R;
        const int nt = tiles_of(tok0), m = p.lanes[g];
        if (g + 1 < p.groups)  // the next group's queries (rows apart: no hardware prefetch)
            for (int t = 0; t < R; t++) {
                int64_t next = p.tok0[(g + 1) * R + t];
                if (next < 0) break;
                const char* q = (const char*)(a.q + next * e);
                for (int64_t i = 0; i < (int64_t)(VL * e * sizeof(T)); i += 64)
                    __builtin_prefetch(q + i);
            }
        for (int t = 0; t < nt; t++)
            K::rows_to_lanes(a.q + (int64_t)tok0[t] * e, e, a.scale, w.q.data() + t * e, m);
        ivec idx{};
        if constexpr (P)
            for (int l = 0; l < VL; l++) idx[l] = p.idx[(int64_t)p.perm[g] * VL + l];
        const int32_t* b0 = p.blocks + (int64_t)p.first[p.sig[g]] * FIELDS;
        const int32_t* b1 = p.blocks + (int64_t)p.first[p.sig[g] + 1] * FIELDS;
        const int64_t col0 = p.column[g] - a.origin;
        vec* s = w.s.data();
        all_scores<P>(b0, b1, w.q.data(), e, a.kt, col0, np, idx, s, slots);
        vec sum[R];
        for (int t = 0; t < nt; t++) {
            vec mx;
            sum[t] = K::softmax(s + t * slots, slots, 1, mx);
            if (a.lse_out) {
                vec l = K::lse(mx, sum[t]);
                for (int i = 0; i < m; i++) a.lse_out[tok0[t] + i] = l[i];
            }
        }
        weigh_all<P>(b0, b1, col0, np, slots, s, a.vt, idx, w.o.data(), ev);
        for (int t = 0; t < nt; t++)
            K::lanes_to_rows(w.o.data() + t * ev, ev, K::splat(1) / sum[t], a.out + tok0[t] * ev, m);
    }

    // The backward of group g: dq written, dK^T and dV^T accumulated into a.dkt, a.dvt.
    template <bool P>
    static void group_backward(const Row<T>& a, const NdfStack& p, int64_t slots, int64_t g,
                               Work& w) {
        const int64_t e = a.e, ev = a.ev, np = a.np;
        const int32_t* tok0 = p.tok0 + g * R;
        const int nt = tiles_of(tok0), m = p.lanes[g];
        vec *q = w.q.data(), *dO = w.g.data(), *s = w.s.data(), *dp = w.dp.data();
        for (int t = 0; t < nt; t++) {
            K::rows_to_lanes(a.q + (int64_t)tok0[t] * e, e, a.scale, q + t * e, m);
            K::rows_to_lanes(a.dout + (int64_t)tok0[t] * ev, ev, 1, dO + t * ev, m);
        }
        ivec idx{};
        Fold f{};
        if constexpr (P) {
            for (int l = 0; l < VL; l++) idx[l] = p.idx[(int64_t)p.perm[g] * VL + l];
            f = make_fold(p.fold + (int64_t)p.perm[g] * (FOLDS + 1) * VL);
        }
        const int32_t* b0 = p.blocks + (int64_t)p.first[p.sig[g]] * FIELDS;
        const int32_t* b1 = p.blocks + (int64_t)p.first[p.sig[g] + 1] * FIELDS;
        const int64_t col0 = p.column[g] - a.origin;
        all_scores<P>(b0, b1, q, e, a.kt, col0, np, idx, s, slots);
        all_scores<P>(b0, b1, dO, ev, a.vt, col0, np, idx, dp, slots);
        for (int t = 0; t < nt; t++) {
            const vec l = K::load_n(a.lse + tok0[t], m, INFINITY);
            const vec d = K::load_n(a.delta + tok0[t], m, 0);
            for (int64_t j = 0; j < slots; j++) {
                vec prob = K::vexp(s[t * slots + j] - l);
                s[t * slots + j] = prob;
                dp[t * slots + j] = prob * (dp[t * slots + j] - d);
            }
        }
        weigh_all<P>(b0, b1, col0, np, slots, dp, a.kt, idx, w.o.data(), e);
        for (int t = 0; t < nt; t++)
            K::lanes_to_rows(w.o.data() + t * e, e, K::splat(a.scale), a.dq + tok0[t] * e, m);
        const int64_t shift = P ? p.shift[p.perm[g]] : 0;
        // q is scale * q: dK^T = scale q^T dS, dV^T = dO^T P
        scatter_all<P>(b0, b1, dp, slots, q, e, a.dkt + shift, col0, np, f);
        scatter_all<P>(b0, b1, s, slots, dO, ev, a.dvt + shift, col0, np, f);
#if defined(NDF_MUTATE_STACK_DK)  // the tests' mutant: one dK contribution perturbed
        if (g == 0) a.dkt[col0 + b0[0]] += (T)1e-3;
#endif
    }

    // The groups [begin, end) of one row.
    template <bool BACKWARD>
    static void run(const Row<T>& a, const NdfStack& p, int64_t slots, int64_t begin, int64_t end) {
        Work w(a.e, a.ev, slots, BACKWARD);
        for (int64_t g = begin; g < end; g++) {
            const bool permuted = p.perm[g] >= 0;
            if constexpr (BACKWARD) {
                if (permuted)
                    group_backward<true>(a, p, slots, g, w);
                else
                    group_backward<false>(a, p, slots, g, w);
            } else {
                if (permuted)
                    group<true>(a, p, slots, g, w);
                else
                    group<false>(a, p, slots, g, w);
            }
        }
    }
};

}  // namespace ndf
