#pragma once
#include "simd.h"

namespace ndf {

// Stacked tiles (neighborhoods): up to R = 3 tiles of VL lanes whose queries are m <= VL
// consecutive tokens (lanes m.. idle) and whose every key slot is one vector load, at a
// column plus a lane index idx[l] shared by the group (the identity inside the grid; a
// clamp at a border: one register permute). Tiles stacked along a grid axis share most
// key columns: the plan lists them as blocks (column, first tile t0, tiles nt, columns
// nj, each tile's slot of the first column), and every key vector a block loads serves
// its nt tiles from registers.
template <typename T>
struct Stack {
    using K = Ops<T>;
    using vec = typename K::vec;
    using ivec = typename K::ivec;
    static constexpr int VL = K::VL, R = 3, FIELDS = 7;

    struct Args {
        const T *q, *kt, *vt;  // one row: q [n, e]; kt, vt [e | ev, np]: K^T, V^T
        T* out;                // [n, ev]
        int64_t np, e, ev;
        const int32_t *tok0, *lanes, *sig, *perm, *idx, *first, *blocks;
        const int64_t* column;
        int64_t groups, slots;
        T scale;
        int64_t origin;  // the token in column 0 of kt and vt
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

    // Group g: queries to lanes, scores block by block, softmax, the value sums, outputs
    // back to rows.
    template <bool P>
    static void group(const Args& a, int64_t g, vec* q, vec* s, vec* o) {
        const int64_t e = a.e, ev = a.ev, np = a.np;
        const int32_t* tok0 = a.tok0 + g * R;
        const T *qr = a.q, *kr = a.kt, *vr = a.vt;
        int nt = 0;
        while (nt < R && tok0[nt] >= 0) nt++;
        if (g + 1 < a.groups)  // the next group's queries (rows apart: no hardware prefetch)
            for (int t = 0; t < R; t++) {
                int64_t next = a.tok0[(g + 1) * R + t];
                if (next < 0) break;
                const char* p = (const char*)(qr + next * e);
                for (int64_t i = 0; i < (int64_t)(VL * e * sizeof(T)); i += 64)
                    __builtin_prefetch(p + i);
            }
        const int m = a.lanes[g];
        for (int t = 0; t < nt; t++)
            K::rows_to_lanes(qr + (int64_t)tok0[t] * e, e, a.scale, q + t * e, m);
        ivec idx{};
        if constexpr (P)
            for (int l = 0; l < VL; l++) idx[l] = a.idx[(int64_t)a.perm[g] * VL + l];
        const int32_t* b0 = a.blocks + (int64_t)a.first[a.sig[g]] * FIELDS;
        const int32_t* b1 = a.blocks + (int64_t)a.first[a.sig[g] + 1] * FIELDS;
        const int64_t col0 = a.column[g] - a.origin;
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
        int64_t c0 = 0;  // value channels in blocks of 8, then 4, then 1
        for (; c0 + 8 <= ev; c0 += 8)
            weigh_blocks<8, P>(a, b0, b1, col0, s, vr + c0 * np, idx, o + c0);
        for (; c0 + 4 <= ev; c0 += 4)
            weigh_blocks<4, P>(a, b0, b1, col0, s, vr + c0 * np, idx, o + c0);
        for (; c0 < ev; c0++) weigh_blocks<1, P>(a, b0, b1, col0, s, vr + c0 * np, idx, o + c0);
        for (int t = 0; t < nt; t++)
            K::lanes_to_rows(o + t * ev, ev, K::splat(1) / sum[t], a.out + tok0[t] * ev, m);
    }

    static void run(const Args& a, int threads) {
        K::parallel(a.groups, threads, [&a](int64_t begin, int64_t end) {
            std::vector<vec> q(a.e * R), s(a.slots * R), o(a.ev * R);
            for (int64_t g = begin; g < end; g++) {
                if (a.perm[g] >= 0)
                    group<true>(a, g, q.data(), s.data(), o.data());
                else
                    group<false>(a, g, q.data(), s.data(), o.data());
            }
        });
    }
};

}  // namespace ndf
