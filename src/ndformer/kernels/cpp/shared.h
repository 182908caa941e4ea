#pragma once
#include "simd.h"

namespace ndf {

// Queries that share one key list (windows): up to G = 4 registers of lanes per tile, keys
// read from row-major K and V (no transposes) as broadcasts, scores and the value sum
// register-blocked as G lane vectors x R keys (or R value channels).
template <typename T>
struct Shared {
    using K = Ops<T>;
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

}  // namespace ndf
