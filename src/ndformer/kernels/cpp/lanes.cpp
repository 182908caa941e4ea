// ndformer's native CPU kernels for local attention patterns, compiled once per machine by
// kernels/native.py:
//   shared.h - windows, stripes, axial attention: the queries of a tile share their keys
//   lanes.h  - any separable pattern, a tile of VL query lanes at a time (plan-driven)
//   stack.h  - neighborhoods: tiles stacked along the grid share their key loads
// This file holds the drivers and the C entry points.
#include "lanes.h"
#include "shared.h"
#include "stack.h"

namespace ndf {

template <typename T>
void shared(const T* q, const T* k, const T* v, T* out, int64_t rows, int64_t n, int64_t e,
            int64_t ev, const int32_t* tokens, const int32_t* keys, const int32_t* counts,
            int64_t tiles, int64_t slots, double scale, int threads) {
    typename Shared<T>::Args a{q, k, v, out, n, e, ev, tokens, keys, counts, tiles, slots,
                               (T)scale};
    Shared<T>::run(a, rows, threads);
}

// The lane kernels' driver. For each row (batch x head): the stacked groups, chunk by
// chunk (chunks [C, 4]: first and end group, first and end key token), each on K and V
// transposed for the chunk's key tokens into the caller's scratch (per worker: [e + ev,
// np], np >= the widest chunk + 2 * VL) where they stay in cache; then the lane kernel's
// tiles `list`, which need the whole row transposed (the caller then gives one chunk over
// all tokens). Whole rows go to separate workers when there are at least as many rows as
// threads (one worker's transposes, which wait on memory, overlap another's arithmetic);
// the remaining rows split their tiles over all threads.
template <typename T>
void lanes(const T* q, const T* k, const T* v, T* out, T* work, int64_t rows, int64_t n,
           int64_t np, int64_t e, int64_t ev, const int32_t* tokens, const int32_t* kind,
           const int32_t* base, const int32_t* offsets, const int64_t* start,
           const int32_t* list, int64_t count, const int32_t* tok0, const int32_t* valid,
           const int32_t* sig, const int32_t* perm, const int32_t* idx, const int32_t* first,
           const int32_t* blocks, const int64_t* column, const int64_t* chunks,
           int64_t nchunks, int64_t slots, double scale, int threads) {
    auto row = [=](int64_t r, T* scratch, int inner) {
        T* kt = scratch;
        T* vt = kt + e * np;
        const T* qr = q + r * n * e;
        T* outr = out + r * n * ev;
        for (int64_t c = 0; c < nchunks; c++) {
            const int64_t* ch = chunks + 4 * c;
            int64_t g0 = ch[0], lo = ch[2], hi = ch[3] < n ? ch[3] : n;
            Ops<T>::transpose(k + (r * n + lo) * e, kt, hi - lo, e, np, inner);
            Ops<T>::transpose(v + (r * n + lo) * ev, vt, hi - lo, ev, np, inner);
            constexpr int R = Stack<T>::R;
            typename Stack<T>::Args a{qr,        kt,    vt,       outr,      np,     e,
                                      ev,        tok0 + R * g0,   valid + g0, sig + g0,
                                      perm + g0, idx,   first,    blocks,    column + g0,
                                      ch[1] - g0, slots, (T)scale, lo};
            Stack<T>::run(a, inner);
        }
        if (count > 0) {
            if (nchunks == 0) {
                Ops<T>::transpose(k + r * n * e, kt, n, e, np, inner);
                Ops<T>::transpose(v + r * n * ev, vt, n, ev, np, inner);
            }
            typename Kernel<T>::Args a{qr,   kt,      vt,    outr,     np,   e,     ev,
                                       tokens, kind,  base,  offsets,  start, slots,
                                       (T)scale, list, count};
            Kernel<T>::run(a, inner);
        }
    };
    int64_t whole = threads > 1 ? rows / threads * threads : 0;
    if (whole > 0)
        Ops<T>::parallel(threads, threads, [=](int64_t w0, int64_t w1) {
            for (int64_t w = w0; w < w1; w++)
                for (int64_t r = w; r < whole; r += threads) row(r, work + w * (e + ev) * np, 1);
        });
    for (int64_t r = whole; r < rows; r++) row(r, work, threads);
}

}  // namespace ndf

using namespace ndf;

// q, k [rows, n, e], v [rows, n, ev], out [rows, n, ev]; work [max(threads, 1), e + ev,
// np] scratch (see lanes() above); the lane plan (the kernel computes its tiles `list`
// [count]) and the stacked plan (`nchunks` may be 0) as described in lanes.h, stack.h.
// One set of entry points per dtype (suffix f32 / f64).
#define NDF_ENTRIES(T, SUFFIX)                                                                \
    int ndf_lanes_vl_##SUFFIX() { return Simd<T>::VL; }                                      \
    void ndf_shared_##SUFFIX(const T* q, const T* k, const T* v, T* out, int64_t rows,        \
                             int64_t n, int64_t e, int64_t ev, const int32_t* tokens,         \
                             const int32_t* keys, const int32_t* counts, int64_t tiles,       \
                             int64_t slots, double scale, int threads) {                      \
        shared<T>(q, k, v, out, rows, n, e, ev, tokens, keys, counts, tiles, slots, scale,    \
                  threads);                                                                   \
    }                                                                                         \
    void ndf_lanes_##SUFFIX(const T* q, const T* k, const T* v, T* out, T* work, int64_t rows, \
                            int64_t n, int64_t np, int64_t e, int64_t ev,                     \
                            const int32_t* tokens, const int32_t* kind, const int32_t* base,  \
                            const int32_t* offsets, const int64_t* start,                     \
                            const int32_t* list, int64_t count, const int32_t* tok0,          \
                            const int32_t* valid, const int32_t* sig, const int32_t* perm,    \
                            const int32_t* idx, const int32_t* first, const int32_t* blocks,  \
                            const int64_t* column, const int64_t* chunks, int64_t nchunks,    \
                            int64_t slots, double scale, int threads) {                       \
        lanes<T>(q, k, v, out, work, rows, n, np, e, ev, tokens, kind, base, offsets, start,  \
                 list, count, tok0, valid, sig, perm, idx, first, blocks, column, chunks,     \
                 nchunks, slots, scale, threads);                                             \
    }

extern "C" {
NDF_ENTRIES(float, f32)
NDF_ENTRIES(double, f64)
}
