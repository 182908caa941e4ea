// ndformer's native CPU kernels for local attention patterns, compiled once per machine by
// kernels/native/build.py:
//   shared.h - windows, stripes, axial attention, groups of points: tiles share their keys
//   lanes.h  - any separable pattern, a tile of VL query lanes at a time (plan-driven)
//   stack.h  - neighborhoods: tiles stacked along the grid share their key loads
// each with a forward (that can save the log-sum-exp) and a backward. This file holds the
// lane kernels' row driver, the C entry points and the ABI report.
#include "abi.h"
#include "lanes.h"
#include "shared.h"
#include "stack.h"

namespace ndf {

// The lane kernels' driver. A row (batch x head) is processed chunk by chunk (chunks [C, 4]:
// first and end group, first and end key token): K and V of the chunk's key tokens are
// transposed into the worker's scratch (kt, vt [e | ev, np], np >= the widest chunk + 3 VL:
// VL columns in front for the backward's shifted adds, 2 VL behind for reads past the
// end), the chunk's stacked groups run, and in the backward the chunk's dK^T, dV^T
// (accumulated in scratch laid out alike) are transposed back and added to dk, dv. The
// lane kernel's tiles `list` need the whole row transposed (the caller then gives one chunk
// over all tokens, or no chunks at all). Whole rows go to separate workers when there are
// at least as many rows as threads (one worker's transposes, which wait on memory, overlap
// another's arithmetic); the remaining rows are shared by all workers, each accumulating
// its own dK^T, dV^T, summed when the chunk is done.
template <typename T>
struct Driver {
    using K = Ops<T>;
    static constexpr int VL = K::VL;

    const NdfCall& c;
    const NdfLanes& lp;
    const NdfStack& sp;
    bool backward;
    int64_t np, per_worker;

    Driver(const NdfCall& c, const NdfLanes& lp, const NdfStack& sp, bool backward)
        : c(c), lp(lp), sp(sp), backward(backward) {
        int64_t widest = c.n;
        if (sp.nchunks > 0) {
            widest = 0;
            for (int64_t i = 0; i < sp.nchunks; i++) {
                int64_t w = sp.chunks[4 * i + 3] - sp.chunks[4 * i + 2];
                widest = w > widest ? w : widest;
            }
            widest = widest < c.n ? widest : c.n;
        }
        np = widest + 3 * VL;
        per_worker = (c.e + c.ev) * np * (backward ? 2 : 1) + VL;
    }

    static int64_t bytes(const NdfCall& c, const NdfLanes& lp, const NdfStack& sp, bool backward) {
        Driver d(c, lp, sp, backward);
        int64_t workers = c.threads > 1 ? c.threads : 1;
        return workers * d.per_worker * (int64_t)sizeof(T);
    }

    // The worker's scratch: kt, vt (and dkt, dvt), each [width, np] from column -VL on.
    Row<T> row(int64_t r, T* scratch) const {
        const int64_t n = c.n, e = c.e, ev = c.ev;
        T* kt = scratch + VL;
        Row<T> a{};
        a.q = (const T*)c.q + r * n * e;
        a.kt = kt;
        a.vt = kt + e * np;
        a.dout = c.dout ? (const T*)c.dout + r * n * ev : nullptr;
        a.lse = c.lse ? (const T*)c.lse + r * n : nullptr;
        a.delta = c.delta ? (const T*)c.delta + r * n : nullptr;
        a.out = backward ? nullptr : (T*)c.out + r * n * ev;
        a.lse_out = backward || !c.lse ? nullptr : (T*)c.lse + r * n;
        a.dq = backward ? (T*)c.dq + r * n * e : nullptr;
        a.dkt = backward ? kt + (e + ev) * np : nullptr;
        a.dvt = backward ? a.dkt + e * np : nullptr;
        a.np = np, a.e = e, a.ev = ev, a.scale = (T)c.scale;
        return a;
    }

    int64_t chunks() const { return sp.nchunks > 0 ? sp.nchunks : 1; }
    // One chunk over every token: the backward writes dk, dv instead of adding to zeros.
    bool writes_whole_row() const {
        if (sp.nchunks == 0) return true;
        return sp.nchunks == 1 && sp.chunks[2] <= 0 && sp.chunks[3] >= c.n;
    }
    // (first group, end group, first key token, end key token) of chunk i
    void chunk(int64_t i, int64_t& g0, int64_t& g1, int64_t& lo, int64_t& hi) const {
        if (sp.nchunks == 0) {
            g0 = g1 = lo = 0;
            hi = c.n;
            return;
        }
        const int64_t* ch = sp.chunks + 4 * i;
        g0 = ch[0], g1 = ch[1], lo = ch[2], hi = ch[3] < c.n ? ch[3] : c.n;
    }

    void transpose_in(const Row<T>& a, int64_t r, int64_t lo, int64_t hi, int64_t b0, int64_t b1) const {
        const int64_t n = c.n, e = c.e, ev = c.ev;
        const T *k = (const T*)c.k + (r * n + lo) * e, *v = (const T*)c.v + (r * n + lo) * ev;
        const int64_t count = hi - lo, t0 = b0 * VL, t1 = b1 * VL < count ? b1 * VL : count;
        if (t1 <= t0) return;  // tokens [t0, t1): blocks b0 .. b1 - 1 of VL tokens
        K::transpose(k + t0 * e, (T*)a.kt + t0, t1 - t0, e, np);
        K::transpose(v + t0 * ev, (T*)a.vt + t0, t1 - t0, ev, np);
        // The columns past the chunk's tokens (read by the slots of masked lanes, whose
        // zero probabilities must not meet a NaN or an infinity left in the scratch by an
        // earlier call) and the VL in front of the first row are zeros.
        if (t1 == count) {
            T* kt = (T*)a.kt;
            for (int64_t d = 0; d < e + ev; d++)
                memset(kt + d * np + count, 0, sizeof(T) * (np - count));
        }
        if (t0 == 0) memset((T*)a.kt - VL, 0, sizeof(T) * VL);
    }

    void zero(const Row<T>& a) const {
        memset(a.dkt - VL, 0, sizeof(T) * (c.e + c.ev) * np);
    }

    // dk, dv [lo, hi) += (or, with one chunk covering the row, =) the chunk's dK^T, dV^T.
    void add_back(const Row<T>& a, int64_t r, int64_t lo, int64_t hi, int64_t b0, int64_t b1,
                  int more) const {
        const bool add = !writes_whole_row();
        const int64_t n = c.n, e = c.e, ev = c.ev;
        T *dk = (T*)c.dk + (r * n + lo) * e, *dv = (T*)c.dv + (r * n + lo) * ev;
        const int64_t count = hi - lo, t0 = b0 * VL, t1 = b1 * VL < count ? b1 * VL : count;
        if (t1 <= t0) return;
        K::transpose_add(a.dkt + t0, dk + t0 * e, t1 - t0, e, np, more, per_worker, add);
        K::transpose_add(a.dvt + t0, dv + t0 * ev, t1 - t0, ev, np, more, per_worker, add);
    }

    template <bool BACKWARD>
    void work_range(Row<T> a, int64_t g0, int64_t g1, int64_t lo, bool rest, int64_t begin,
                    int64_t end, int64_t rbegin, int64_t rend) const {
        a.origin = lo;
        if (begin < end) Stack<T>::template run<BACKWARD>(a, sp, lp.slots, g0 + begin, g0 + end);
        if (rest && rbegin < rend) Kernel<T>::template run<BACKWARD>(a, lp, rbegin, rend);
    }

    // One worker, one whole row.
    template <bool BACKWARD>
    void whole_row(int64_t r, T* scratch) const {
        Row<T> a = row(r, scratch);
        if (BACKWARD && !writes_whole_row()) {
            memset((T*)c.dk + r * c.n * c.e, 0, sizeof(T) * c.n * c.e);
            memset((T*)c.dv + r * c.n * c.ev, 0, sizeof(T) * c.n * c.ev);
        }
        for (int64_t i = 0; i < chunks(); i++) {
            int64_t g0, g1, lo, hi;
            chunk(i, g0, g1, lo, hi);
            const int64_t blocks = (hi - lo + VL - 1) / VL;
            transpose_in(a, r, lo, hi, 0, blocks);
            if (BACKWARD) zero(a);
            const bool rest = i == chunks() - 1;
            work_range<BACKWARD>(a, g0, g1, lo, rest, 0, g1 - g0, 0, lp.count);
            if (BACKWARD) add_back(a, r, lo, hi, 0, blocks, 0);
        }
    }

    // All workers, one row: each takes a share of every phase; barriers between phases.
    template <bool BACKWARD>
    void shared_row(int64_t r, T* work, int threads) const {
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads)
#endif
        {
            const int t = thread_index();
            int count = threads;
#if defined(_OPENMP)
            count = omp_get_num_threads();
#endif
            Row<T> a = row(r, work), mine = row(r, work + t * per_worker);
            a.dkt = mine.dkt, a.dvt = mine.dvt;  // K^T, V^T shared; dK^T, dV^T the worker's
            auto share = [t, count](int64_t jobs, int64_t& b, int64_t& e) {
                b = jobs * t / count, e = jobs * (t + 1) / count;
            };
            int64_t b, e;
            if (BACKWARD && !writes_whole_row()) {
                share(c.n, b, e);
                memset((T*)c.dk + (r * c.n + b) * c.e, 0, sizeof(T) * (e - b) * c.e);
                memset((T*)c.dv + (r * c.n + b) * c.ev, 0, sizeof(T) * (e - b) * c.ev);
            }
            for (int64_t i = 0; i < chunks(); i++) {
                int64_t g0, g1, lo, hi;
                chunk(i, g0, g1, lo, hi);
                const int64_t blocks = (hi - lo + VL - 1) / VL;
                share(blocks, b, e);
                transpose_in(a, r, lo, hi, b, e);
                if (BACKWARD) zero(a);
#if defined(_OPENMP)
#pragma omp barrier
#endif
                const bool rest = i == chunks() - 1;
                int64_t rb = 0, re = 0;
                share(g1 - g0, b, e);
                if (rest) share(lp.count, rb, re);
                work_range<BACKWARD>(a, g0, g1, lo, rest, b, e, rb, re);
#if defined(_OPENMP)
#pragma omp barrier
#endif
                if (BACKWARD) {
                    Row<T> first = row(r, work);  // every worker's scratch, from worker 0's on
                    share(blocks, b, e);
                    add_back(first, r, lo, hi, b, e, count - 1);
#if defined(_OPENMP)
#pragma omp barrier
#endif
                }
            }
        }
    }

    template <bool BACKWARD>
    void run() const {
        const int threads = c.threads > 1 ? (int)c.threads : 1;
        T* work = (T*)c.work;
        const int64_t whole = threads > 1 ? c.rows / threads * threads : 0;
        if (whole > 0)
            parallel(threads, threads, [&](int64_t w0, int64_t w1) {
                for (int64_t w = w0; w < w1; w++)
                    for (int64_t r = w; r < whole; r += threads)
                        whole_row<BACKWARD>(r, work + w * per_worker);
            });
        for (int64_t r = whole; r < c.rows; r++) {
            if (threads > 1)
                shared_row<BACKWARD>(r, work, threads);
            else
                whole_row<BACKWARD>(r, work);
        }
    }
};

}  // namespace ndf

using namespace ndf;

extern "C" {

#define NDF_ENTRIES(T, SUFFIX)                                                              \
    void ndf_shared_forward_##SUFFIX(const NdfCall* c, const NdfShared* p) {                \
        Shared<T>::forward(*c, *p);                                                         \
    }                                                                                       \
    void ndf_shared_backward_##SUFFIX(const NdfCall* c, const NdfShared* p) {               \
        Shared<T>::backward(*c, *p);                                                        \
    }                                                                                       \
    int64_t ndf_lanes_work_##SUFFIX(const NdfCall* c, const NdfLanes* l, const NdfStack* s, \
                                    int backward) {                                         \
        return Driver<T>::bytes(*c, *l, *s, backward != 0);                                 \
    }                                                                                       \
    int ndf_lanes_forward_##SUFFIX(const NdfCall* c, const NdfLanes* l, const NdfStack* s) {  \
        Driver<T> d(*c, *l, *s, false);                                                     \
        if (c->work_bytes < Driver<T>::bytes(*c, *l, *s, false)) return 1;                  \
        d.template run<false>();                                                            \
        return 0;                                                                           \
    }                                                                                       \
    int ndf_lanes_backward_##SUFFIX(const NdfCall* c, const NdfLanes* l, const NdfStack* s) { \
        Driver<T> d(*c, *l, *s, true);                                                      \
        if (c->work_bytes < Driver<T>::bytes(*c, *l, *s, true)) return 1;                   \
        d.template run<true>();                                                             \
        return 0;                                                                           \
    }

NDF_ENTRIES(float, f32)
NDF_ENTRIES(double, f64)

// The ABI report: out[0] = how many entries follow; then the constants Python plans with,
// then for each struct its size and the offset of every field, in declaration order.
int64_t ndf_abi(int64_t* out, int64_t capacity) {
    std::vector<int64_t> v = {
        1,  // ABI version
        Simd<float>::VL, Simd<double>::VL, REGISTERS,
        SKIP, SHIFT, BCAST, PERM, GATHER,
        Shared<float>::GMAX, Stack<float>::R, Stack<float>::FIELDS, Stack<float>::COLUMNS,
        Stack<double>::COLUMNS, Stack<float>::FOLDS,
#if defined(_OPENMP)
        1,
#else
        0,
#endif
    };
#define NDF_FIELD(S, F) v.push_back((int64_t)offsetof(S, F))
    v.push_back(sizeof(NdfCall));
    NDF_FIELD(NdfCall, q); NDF_FIELD(NdfCall, k); NDF_FIELD(NdfCall, v); NDF_FIELD(NdfCall, out);
    NDF_FIELD(NdfCall, lse); NDF_FIELD(NdfCall, dout); NDF_FIELD(NdfCall, delta);
    NDF_FIELD(NdfCall, dq); NDF_FIELD(NdfCall, dk); NDF_FIELD(NdfCall, dv);
    NDF_FIELD(NdfCall, work); NDF_FIELD(NdfCall, work_bytes); NDF_FIELD(NdfCall, rows);
    NDF_FIELD(NdfCall, n); NDF_FIELD(NdfCall, e); NDF_FIELD(NdfCall, ev);
    NDF_FIELD(NdfCall, scale); NDF_FIELD(NdfCall, threads);
    v.push_back(sizeof(NdfShared));
    NDF_FIELD(NdfShared, tokens); NDF_FIELD(NdfShared, keys); NDF_FIELD(NdfShared, counts);
    NDF_FIELD(NdfShared, first); NDF_FIELD(NdfShared, tiles); NDF_FIELD(NdfShared, slots);
    NDF_FIELD(NdfShared, groups);
    v.push_back(sizeof(NdfLanes));
    NDF_FIELD(NdfLanes, tokens); NDF_FIELD(NdfLanes, kind); NDF_FIELD(NdfLanes, base);
    NDF_FIELD(NdfLanes, offsets); NDF_FIELD(NdfLanes, start); NDF_FIELD(NdfLanes, list);
    NDF_FIELD(NdfLanes, tiles); NDF_FIELD(NdfLanes, slots); NDF_FIELD(NdfLanes, count);
    v.push_back(sizeof(NdfStack));
    NDF_FIELD(NdfStack, tok0); NDF_FIELD(NdfStack, lanes); NDF_FIELD(NdfStack, sig);
    NDF_FIELD(NdfStack, perm); NDF_FIELD(NdfStack, idx); NDF_FIELD(NdfStack, fold);
    NDF_FIELD(NdfStack, shift); NDF_FIELD(NdfStack, first); NDF_FIELD(NdfStack, blocks);
    NDF_FIELD(NdfStack, column); NDF_FIELD(NdfStack, chunks); NDF_FIELD(NdfStack, groups);
    NDF_FIELD(NdfStack, nchunks);
#undef NDF_FIELD
    for (int64_t i = 0; i < (int64_t)v.size() && i + 1 < capacity; i++) out[i + 1] = v[i];
    out[0] = (int64_t)v.size();
    return (int64_t)v.size();
}
}
