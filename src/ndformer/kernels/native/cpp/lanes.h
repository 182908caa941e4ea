// The lane kernel: any separable pattern, one tile of VL query lanes at a time.
//
// A plan (built in Python, kernels/native/lane_plans.py) groups the queries into tiles of
// VL "lanes" (VL = one SIMD register) and lists, for every tile, the key "slots": slot s of
// lane l is the s-th key of that lane's query. Each (tile, slot) has a kind saying how the
// keys of its VL lanes lie in the transposed key matrix K^T [E, N]:
//   SHIFT  - lane l's key is base + l      (neighborhoods: a vector load)
//   BCAST  - every lane's key is base      (windows, stripes: one broadcast)
//   PERM   - lane l's key is start + off[l], all within 2*VL tokens (borders, dilation:
//            two loads and a permute), off[l] < 0 = no key (masked)
//   GATHER - lane l's key is start + off[l] otherwise (one load per lane)
//   SKIP   - no lane has a key in this slot
// Scores, softmax and the weighted sum of values are computed with the lanes in the
// SIMD register, so no work is spent on pairs the pattern does not allow. The backward
// recomputes the scores, adds dK^T and dV^T into the worker's own accumulators (a SHIFT
// slot as one vector, a BCAST slot as a lane sum, PERM / GATHER lane by lane).
#pragma once
#include "abi.h"
#include "simd.h"

namespace ndf {

enum { SKIP = 0, SHIFT = 1, BCAST = 2, PERM = 3, GATHER = 4 };

// One row (batch x head) as the lane and stacked kernels see it: row-major q, dout, out,
// dq [n, e | ev]; per-token lse and delta; K^T and V^T [e | ev, np] of the key tokens from
// `origin` on (scratch), and in the backward the dK^T, dV^T accumulators laid out alike.
template <typename T>
struct Row {
    const T *q, *kt, *vt, *dout, *lse, *delta;
    T *out, *lse_out, *dq, *dkt, *dvt;
    int64_t np, e, ev, origin;
    T scale;
};

template <typename T>
struct Kernel : Ops<T> {
    using O = Ops<T>;
    using typename O::ivec;
    using typename O::vec;
    using O::gather, O::load, O::splat;
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

    // Lane l's index into a PERM / GATHER slot's loaded keys (0 for a masked lane).
    static inline ivec lane_index(const int32_t* off) {
        ivec idx;
        for (int l = 0; l < VL; l++) idx[l] = off[l] < 0 ? 0 : off[l];
        return idx;
    }

    // Scores of SB consecutive slots of one kind: out[i] = sum_d qt[d] * keys_d(slot i),
    // keys from xt [width, np]. For PERM / GATHER, base[i] indexes offsets / start, and
    // masked lanes get -inf.
    template <int KIND, int SB>
    static inline void scores(const vec* qt, const T* xt, int64_t np, int64_t width,
                              const int32_t* base, const NdfLanes& p, vec* out) {
        vec acc[SB];
        const T* ptr[SB];
        ivec idx[SB];
        for (int i = 0; i < SB; i++) {
            acc[i] = splat(0);
            if constexpr (KIND == SHIFT || KIND == BCAST) {
                ptr[i] = xt + base[i];
            } else {
                ptr[i] = xt + p.start[base[i]];
                idx[i] = lane_index(p.offsets + (int64_t)base[i] * VL);
            }
        }
        for (int64_t d = 0; d < width; d++) {
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
                const int32_t* off = p.offsets + (int64_t)base[i] * VL;
                for (int l = 0; l < VL; l++)
                    if (off[l] < 0) acc[i][l] = -INFINITY;
            }
            out[i] = acc[i];
        }
    }

    template <int KIND>
    static inline int64_t score_run(const vec* qt, const T* xt, int64_t np, int64_t width,
                                    const int32_t* base, const NdfLanes& p, vec* out,
                                    int64_t run) {
        if (run >= 8 && KIND != GATHER && WIDE) {
            scores<KIND, 8>(qt, xt, np, width, base, p, out);
            return 8;
        }
        if (run >= 4) {
            scores<KIND, 4>(qt, xt, np, width, base, p, out);
            return 4;
        }
        scores<KIND, 1>(qt, xt, np, width, base, p, out);
        return 1;
    }

    // s[j] = scores of every slot of tile t against xt (K^T or V^T) for lanes qt.
    static void all_scores(const vec* qt, const T* xt, int64_t np, int64_t width,
                           const NdfLanes& p, int64_t t, vec* s) {
        const int32_t* kd = p.kind + t * p.slots;
        const int32_t* bs = p.base + t * p.slots;
        for (int64_t j = 0; j < p.slots;) {
            int k0 = kd[j];
            int64_t run = 1;
            while (run < 8 && j + run < p.slots && kd[j + run] == k0) run++;
            const int32_t* b = bs + j;
            switch (k0) {
                case SHIFT: j += score_run<SHIFT>(qt, xt, np, width, b, p, s + j, run); break;
                case BCAST: j += score_run<BCAST>(qt, xt, np, width, b, p, s + j, run); break;
                case PERM: j += score_run<PERM>(qt, xt, np, width, b, p, s + j, run); break;
                case GATHER: j += score_run<GATHER>(qt, xt, np, width, b, p, s + j, run); break;
                default: s[j++] = splat(-INFINITY);
            }
        }
    }

    // acc[d] += sum over slots of w[slot] * (channel d of the slot's keys), for DB channels
    // starting at `col` (rows of K^T or V^T, stride np); runs of one kind stay in registers.
    template <int DB>
    static inline void weigh(const NdfLanes& p, int64_t np, const int32_t* kd, const int32_t* bs,
                             const vec* w, const T* col, vec* out) {
        vec acc[DB];
        for (int d = 0; d < DB; d++) acc[d] = out[d];
        for (int64_t i = 0; i < p.slots;) {
            int k0 = kd[i];
            int64_t j = i + 1;
            while (j < p.slots && kd[j] == k0) j++;
            if (k0 == SHIFT) {
                for (; i < j; i++) {
                    const T* c = col + bs[i];
                    for (int d = 0; d < DB; d++) acc[d] += w[i] * load(c + d * np);
                }
            } else if (k0 == BCAST) {
                for (; i < j; i++) {
                    const T* c = col + bs[i];
                    for (int d = 0; d < DB; d++) acc[d] += w[i] * splat(c[d * np]);
                }
            } else if (k0 == SKIP) {
                i = j;
            } else {
                for (; i < j; i++) {
                    const int32_t* off = p.offsets + (int64_t)bs[i] * VL;
                    const T* c = col + p.start[bs[i]];
                    ivec idx = lane_index(off);
                    for (int d = 0; d < DB; d++) acc[d] += w[i] * mixed(c + d * np, idx, k0);
                }
            }
        }
        for (int d = 0; d < DB; d++) out[d] = acc[d];
    }

    // o[c] = sum over slots of w[slot] * channel c of its keys in xt [width, np].
    static void weigh_all(const NdfLanes& p, int64_t t, int64_t np, const vec* w, const T* xt,
                          int64_t width, vec* o) {
        const int32_t* kd = p.kind + t * p.slots;
        const int32_t* bs = p.base + t * p.slots;
        constexpr int DB = WIDE ? 8 : 4;  // channels held in registers per pass over the slots
        for (int64_t d0 = 0; d0 < width; d0 += DB) {
            int dn = width - d0 < DB ? (int)(width - d0) : DB;
            vec acc[DB];
            for (int i = 0; i < DB; i++) acc[i] = splat(0);
            const T* col = xt + d0 * np;
            if (dn == DB)
                weigh<DB>(p, np, kd, bs, w, col, acc);
            else
                for (int d = 0; d < dn; d++) weigh<1>(p, np, kd, bs, w, col + d * np, acc + d);
            for (int d = 0; d < dn; d++) o[d0 + d] = acc[d];
        }
    }

    // xt[c][key of (lane, slot)] += w[slot][lane] * x[c][lane] for every slot and channel
    // (the transpose of weigh_all: the backward's dK^T and dV^T).
    static void scatter_all(const NdfLanes& p, int64_t t, int64_t np, const vec* w, const vec* x,
                            T* xt, int64_t width) {
        const int32_t* kd = p.kind + t * p.slots;
        const int32_t* bs = p.base + t * p.slots;
        for (int64_t i = 0; i < p.slots; i++) {
            const vec wi = w[i];
            if (kd[i] == SHIFT) {
                T* c = xt + bs[i];
                for (int64_t d = 0; d < width; d++) O::add_to(c + d * np, wi * x[d]);
            } else if (kd[i] == BCAST) {
                T* c = xt + bs[i];
                for (int64_t d = 0; d < width; d++) c[d * np] += O::hsum(wi * x[d]);
            } else if (kd[i] == PERM || kd[i] == GATHER) {
                const int32_t* off = p.offsets + (int64_t)bs[i] * VL;
                T* c = xt + p.start[bs[i]];
                for (int l = 0; l < VL; l++) {
                    if (off[l] < 0) continue;
                    T* key = c + off[l];
                    for (int64_t d = 0; d < width; d++) key[d * np] += wi[l] * x[d][l];
                }
            }
        }
    }

    struct Work {
        std::vector<vec> qt, dt, s, dp, o;
        Work(int64_t e, int64_t ev, int64_t slots)
            : qt(e), dt(ev), s(slots), dp(slots), o(e > ev ? e : ev) {}
    };

    // Tile t of one row: forward (out, and lse if asked).
    static void tile(const Row<T>& a, const NdfLanes& p, int64_t t, Work& w) {
        const int32_t* tok = p.tokens + t * VL;
        vec *qt = w.qt.data(), *s = w.s.data();
        gather(a.q, a.e, tok, a.scale, qt, 1);
        all_scores(qt, a.kt, a.np, a.e, p, t, s);
        vec mx, sum = O::softmax(s, p.slots, 1, mx);
        weigh_all(p, t, a.np, s, a.vt, a.ev, w.o.data());
        vec inv = splat(1) / (sum == splat(0) ? splat(1) : sum);
        O::scatter(a.out, a.ev, tok, w.o.data(), 1, inv);
        if (a.lse_out) {
            vec l = O::lse(mx, sum);
            for (int i = 0; i < VL; i++)
                if (tok[i] >= 0) a.lse_out[tok[i]] = l[i];
        }
    }

    // Tile t of one row: backward (dq written, dK^T and dV^T accumulated).
    static void tile_backward(const Row<T>& a, const NdfLanes& p, int64_t t, Work& w) {
        const int32_t* tok = p.tokens + t * VL;
        vec *qt = w.qt.data(), *dt = w.dt.data(), *s = w.s.data(), *dp = w.dp.data();
        gather(a.q, a.e, tok, a.scale, qt, 1);
        gather(a.dout, a.ev, tok, 1, dt, 1);
        all_scores(qt, a.kt, a.np, a.e, p, t, s);
        all_scores(dt, a.vt, a.np, a.ev, p, t, dp);
        const vec l = O::gather1(a.lse, tok, INFINITY), d = O::gather1(a.delta, tok, 0);
        for (int64_t j = 0; j < p.slots; j++) {  // masked lanes: dp = -inf but P = 0
            vec prob = O::vexp(s[j] - l);
            s[j] = prob;
            dp[j] = prob > 0 ? prob * (dp[j] - d) : splat(0);
        }
        weigh_all(p, t, a.np, dp, a.kt, a.e, w.o.data());
        O::scatter(a.dq, a.e, tok, w.o.data(), 1, splat(a.scale));
        scatter_all(p, t, a.np, dp, qt, a.dkt, a.e);  // qt is scale * q: dK = scale dS^T q
        scatter_all(p, t, a.np, s, dt, a.dvt, a.ev);
    }

    // The tiles list[begin..end) of one row.
    template <bool BACKWARD>
    static void run(const Row<T>& a, const NdfLanes& p, int64_t begin, int64_t end) {
        Work w(a.e, a.ev, p.slots);
        for (int64_t i = begin; i < end; i++) {
            if constexpr (BACKWARD)
                tile_backward(a, p, p.list[i], w);
            else
                tile(a, p, p.list[i], w);
        }
    }
};

}  // namespace ndf
