// The lane kernel: any separable pattern, one tile of VL query lanes at a time.
//
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
#pragma once
#include "simd.h"

namespace ndf {

enum { SKIP = 0, SHIFT = 1, BCAST = 2, PERM = 3, GATHER = 4 };

template <typename T>
struct Kernel : Ops<T> {
    using O = Ops<T>;
    using typename O::ivec;
    using typename O::vec;
    using O::gather, O::load, O::parallel, O::scatter, O::softmax, O::splat;
    static constexpr int VL = O::VL;

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
        int64_t np, e, ev;
        const int32_t *tokens, *kind, *base, *offsets;
        const int64_t* start;
        int64_t slots;
        T scale;
        const int32_t* list;  // the tiles to compute
        int64_t count;
    };

    // Tile t of one row (q [n, e], kt / vt [e | ev, np], out [n, ev]).
    static void tile(const Args& a, int64_t t, vec* qt, vec* s, vec* o) {
        const int32_t* tok = a.tokens + t * VL;
        const T *qr = a.q, *kr = a.kt, *vr = a.vt;
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
        scatter(a.out, a.ev, tok, o, 1, inv);
    }

    static void run(const Args& a, int threads) {
        parallel(a.count, threads, [&a](int64_t begin, int64_t end) {
            std::vector<vec> qt(a.e), s(a.slots), o(a.ev);
            for (int64_t i = begin; i < end; i++) tile(a, a.list[i], qt.data(), s.data(), o.data());
        });
    }

};

}  // namespace ndf
