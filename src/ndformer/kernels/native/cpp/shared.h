#pragma once
#include <type_traits>

#include "abi.h"
#include "simd.h"

namespace ndf {

// Queries that share one key list (windows, stripes, axial attention, groups of points): up
// to GMAX registers of lanes per tile, keys read from row-major K and V (no transposes) as
// broadcasts; scores and value sums register-blocked as G lane vectors x R keys (or R value
// channels). Every group's queries are exactly its keys (a partition), so the backward of
// a group (all its tiles in one job) owns its keys' gradients: no two jobs write one row.
template <typename T>
struct Shared {
    using K = Ops<T>;
    using vec = typename K::vec;
    static constexpr int VL = K::VL, GMAX = 4, R = WIDE ? 4 : 2;
    // backward dK / dV register blocks: RJ keys x CV vectors of channels
    static constexpr int RJ = 4, CV = WIDE ? 4 : 2;

    // out[i * G + g] = sum over steps t of a(t, g) * b(t, i), for i < RB: one register
    // block of G lane registers x RB broadcast scalars. The scores (t: channel, i: key)
    // and the value sums (t: key, i: value channel) are both this.
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

    // s[j * G + g] = sum_d x[d * G + g] * rows[key[j]][d] for j < count (rows [n, width]).
    template <int G>
    static void dots(const vec* x, const T* rows, int64_t width, const int32_t* key,
                     int64_t count, vec* s) {
        auto lanes = [x](int64_t d, int g) { return x[d * G + g]; };
        int64_t j = 0;
        for (; j + R <= count; j += R) {
            const T* kj[R];
            for (int i = 0; i < R; i++) kj[i] = rows + (int64_t)key[j + i] * width;
            block<G, R>(s + j * G, width, lanes, [&kj](int64_t d, int i) { return kj[i][d]; });
        }
        for (; j < count; j++) {
            const T* kj = rows + (int64_t)key[j] * width;
            block<G, 1>(s + j * G, width, lanes, [kj](int64_t d, int) { return kj[d]; });
        }
    }

    // o[c * G + g] = sum_j w[j * G + g] * rows[key[j]][c] for c < width.
    template <int G>
    static void weigh(const vec* w, const T* rows, int64_t width, const int32_t* key,
                      int64_t count, vec* o) {
        auto weight = [w](int64_t i, int g) { return w[i * G + g]; };
        int64_t c0 = 0;
        for (; c0 + R <= width; c0 += R) {
            const T* vc = rows + c0;
            block<G, R>(o + c0 * G, count, weight, [vc, key, width](int64_t i, int c) {
                return vc[(int64_t)key[i] * width + c];
            });
        }
        for (; c0 < width; c0++) {
            const T* vc = rows + c0;
            block<G, 1>(o + c0 * G, count, weight,
                        [vc, key, width](int64_t i, int) { return vc[(int64_t)key[i] * width]; });
        }
    }

    struct Work {  // one worker's buffers
        std::vector<vec> qt, dt, s, dp, o;
        std::vector<T> dk, dv;
        std::vector<const T*> rq, rd;
        std::vector<int32_t> at;
        Work(int64_t e, int64_t ev, int64_t slots, bool backward)
            : qt(e * GMAX), dt(backward ? ev * GMAX : 0), s(slots * GMAX),
              dp(backward ? slots * GMAX : 0), o((e > ev ? e : ev) * GMAX),
              dk(backward ? slots * e : 0), dv(backward ? slots * ev : 0), rq(GMAX * VL),
              rd(GMAX * VL), at(GMAX * VL) {}
    };

    template <int G>
    static void tile(const NdfCall& c, const NdfShared& p, int64_t r, int64_t t, Work& w) {
        const int32_t* tok = p.tokens + t * GMAX * VL;
        const int32_t* key = p.keys + t * p.slots;
        const int64_t count = p.counts[t], e = c.e, ev = c.ev, n = c.n;
        const T* qr = (const T*)c.q + r * n * e;
        for (int g = 0; g < G; g++) K::gather(qr, e, tok + g * VL, (T)c.scale, w.qt.data() + g, G);
        dots<G>(w.qt.data(), (const T*)c.k + r * n * e, e, key, count, w.s.data());
        vec sum[G];
        for (int g = 0; g < G; g++) {
            vec mx;
            sum[g] = K::softmax(w.s.data() + g, count, G, mx);
            if (c.lse) {
                vec l = K::lse(mx, sum[g]);
                T* lse = (T*)c.lse + r * n;
                for (int i = 0; i < VL; i++)
                    if (tok[g * VL + i] >= 0) lse[tok[g * VL + i]] = l[i];
            }
        }
        weigh<G>(w.s.data(), (const T*)c.v + r * n * ev, ev, key, count, w.o.data());
        for (int g = 0; g < G; g++)
            K::scatter((T*)c.out + r * n * ev, ev, tok + g * VL, w.o.data() + g, G,
                       K::splat(1) / sum[g]);
    }

    // acc[key j][channel] += sum_i a[j][i] * rows_i[channel] over the tile's real queries
    // i (a[j][i] = weights[(j * G + g_i) * VL + l_i]), for keys [j0, j0 + RB): register
    // blocks of RB keys x CB vectors; scalar for the last width % VL channels.
    template <int RB>
    static void accumulate(T* acc, int64_t width, const T* weights, int64_t stride_j,
                           const int32_t* at, const T* const* rows, int64_t queries) {
        int64_t c0 = 0;
        auto run = [&](auto cb) {
            constexpr int CB = decltype(cb)::value;
            vec x[RB][CB];
            for (int j = 0; j < RB; j++)
                for (int v = 0; v < CB; v++) x[j][v] = K::load(acc + j * width + c0 + v * VL);
            for (int64_t i = 0; i < queries; i++) {
                vec y[CB];
                for (int v = 0; v < CB; v++) y[v] = K::load(rows[i] + c0 + v * VL);
                for (int j = 0; j < RB; j++) {
                    vec a = K::splat(weights[j * stride_j + at[i]]);
                    for (int v = 0; v < CB; v++) x[j][v] += a * y[v];
                }
            }
            for (int j = 0; j < RB; j++)
                for (int v = 0; v < CB; v++) K::store(acc + j * width + c0 + v * VL, x[j][v]);
        };
        for (; c0 + CV * VL <= width; c0 += CV * VL) run(std::integral_constant<int, CV>{});
        for (; c0 + VL <= width; c0 += VL) run(std::integral_constant<int, 1>{});
        for (; c0 < width; c0++)
            for (int j = 0; j < RB; j++) {
                T x = acc[j * width + c0];
                for (int64_t i = 0; i < queries; i++) x += weights[j * stride_j + at[i]] * rows[i][c0];
                acc[j * width + c0] = x;
            }
    }

    // The backward of one tile of a group: scores and probabilities from the saved
    // log-sum-exp, dS = P (dP - delta), dQ written, dK / dV accumulated in the group's
    // buffers (w.dk, w.dv: [count, e | ev], rows in key order).
    template <int G>
    static void tile_backward(const NdfCall& c, const NdfShared& p, int64_t r, int64_t t, Work& w) {
        const int32_t* tok = p.tokens + t * GMAX * VL;
        const int32_t* key = p.keys + t * p.slots;
        const int64_t count = p.counts[t], e = c.e, ev = c.ev, n = c.n;
        const T *qr = (const T*)c.q + r * n * e, *dor = (const T*)c.dout + r * n * ev;
        const T *lse = (const T*)c.lse + r * n, *delta = (const T*)c.delta + r * n;
        vec *qt = w.qt.data(), *dt = w.dt.data(), *s = w.s.data(), *dp = w.dp.data();
        for (int g = 0; g < G; g++) {
            K::gather(qr, e, tok + g * VL, (T)c.scale, qt + g, G);
            K::gather(dor, ev, tok + g * VL, 1, dt + g, G);
        }
        dots<G>(qt, (const T*)c.k + r * n * e, e, key, count, s);
        dots<G>(dt, (const T*)c.v + r * n * ev, ev, key, count, dp);
        for (int g = 0; g < G; g++) {
            vec l = K::gather1(lse, tok + g * VL, INFINITY), d = K::gather1(delta, tok + g * VL, 0);
            for (int64_t j = 0; j < count; j++) {
                vec prob = K::vexp(s[j * G + g] - l);
                s[j * G + g] = prob;
                dp[j * G + g] = prob * (dp[j * G + g] - d);
            }
        }
        weigh<G>(dp, (const T*)c.k + r * n * e, e, key, count, w.o.data());
        for (int g = 0; g < G; g++)
            K::scatter((T*)c.dq + r * n * e, e, tok + g * VL, w.o.data() + g, G, K::splat((T)c.scale));
        int64_t queries = 0;  // the tile's real queries: their rows and lanes
        for (int i = 0; i < G * VL; i++) {
            if (tok[i] < 0) continue;
            w.rq[queries] = qr + (int64_t)tok[i] * e;
            w.rd[queries] = dor + (int64_t)tok[i] * ev;
            w.at[queries++] = i;  // lane l of register g: s[(j * G + g) * VL + l] for key j
        }
        const T *ps = (const T*)s, *ds = (const T*)dp;
        const int64_t stride = G * VL;  // one key's G lane vectors
        int64_t j = 0;
        for (; j + RJ <= count; j += RJ) {
            accumulate<RJ>(w.dk.data() + j * e, e, ds + j * stride, stride, w.at.data(),
                           w.rq.data(), queries);
            accumulate<RJ>(w.dv.data() + j * ev, ev, ps + j * stride, stride, w.at.data(),
                           w.rd.data(), queries);
        }
        for (; j < count; j++) {
            accumulate<1>(w.dk.data() + j * e, e, ds + j * stride, stride, w.at.data(),
                          w.rq.data(), queries);
            accumulate<1>(w.dv.data() + j * ev, ev, ps + j * stride, stride, w.at.data(),
                          w.rd.data(), queries);
        }
    }

    static int registers(const int32_t* tok) {
        int g = GMAX;
        while (g > 1 && tok[(g - 1) * VL] < 0) g--;
        return g;
    }

    template <bool BACKWARD>
    static void one(const NdfCall& c, const NdfShared& p, int64_t r, int64_t t, Work& w) {
        switch (registers(p.tokens + t * GMAX * VL)) {
            case 1: return BACKWARD ? tile_backward<1>(c, p, r, t, w) : tile<1>(c, p, r, t, w);
            case 2: return BACKWARD ? tile_backward<2>(c, p, r, t, w) : tile<2>(c, p, r, t, w);
            case 3: return BACKWARD ? tile_backward<3>(c, p, r, t, w) : tile<3>(c, p, r, t, w);
            default: return BACKWARD ? tile_backward<4>(c, p, r, t, w) : tile<4>(c, p, r, t, w);
        }
    }

    static void forward(const NdfCall& c, const NdfShared& p) {
        parallel(c.rows * p.tiles, (int)c.threads, [&](int64_t begin, int64_t end) {
            Work w(c.e, c.ev, p.slots, false);
            for (int64_t job = begin; job < end; job++)
                one<false>(c, p, job / p.tiles, job % p.tiles, w);
        });
    }

    // One job per (row, group): the group's tiles, then its keys' dK and dV written.
    static void backward(const NdfCall& c, const NdfShared& p) {
        parallel(c.rows * p.groups, (int)c.threads, [&](int64_t begin, int64_t end) {
            Work w(c.e, c.ev, p.slots, true);
            for (int64_t job = begin; job < end; job++) {
                const int64_t r = job / p.groups, g = job % p.groups, e = c.e, ev = c.ev;
                const int64_t t0 = p.first[g], t1 = p.first[g + 1], count = p.counts[t0];
                memset(w.dk.data(), 0, sizeof(T) * count * e);
                memset(w.dv.data(), 0, sizeof(T) * count * ev);
                for (int64_t t = t0; t < t1; t++) one<true>(c, p, r, t, w);
                const int32_t* key = p.keys + t0 * p.slots;
                T *dk = (T*)c.dk + r * c.n * e, *dv = (T*)c.dv + r * c.n * ev;
                const T scale = (T)c.scale;
                for (int64_t j = 0; j < count; j++) {
                    T *kj = dk + (int64_t)key[j] * e, *vj = dv + (int64_t)key[j] * ev;
                    for (int64_t d = 0; d < e; d++) kj[d] = scale * w.dk[j * e + d];
                    for (int64_t d = 0; d < ev; d++) vj[d] = w.dv[j * ev + d];
                }
#if defined(NDF_MUTATE_SHARED_DK)  // the tests' mutant: one dK contribution perturbed
                if (g == 0) dk[(int64_t)key[0] * e] += (T)1e-3;
#endif
            }
        });
    }
};

}  // namespace ndf
