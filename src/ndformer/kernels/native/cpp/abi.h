// The native interface: the argument structs of every entry point (mirrored field by field
// by ctypes.Structures in kernels/native/abi.py) and the constants Python plans with.
// `ndf_abi` reports both, so Python checks the layouts and reads the constants at load
// instead of keeping copies.
#pragma once
#include <stddef.h>
#include <stdint.h>

extern "C" {

// The tensors of one call (rows = batch x heads; every tensor contiguous): q, k [rows, n, e],
// v [rows, n, ev]. Forward writes out [rows, n, ev] and, if lse is not null, the
// log-sum-exp of every query [rows, n]. Backward reads dout [rows, n, ev], lse and delta
// [rows, n] (delta = rowsum(dout * out)) and writes dq, dk [rows, n, e], dv [rows, n, ev].
// work: scratch of work_bytes (the lane kernels' per-worker transposes).
struct NdfCall {
    const void *q, *k, *v;
    void *out, *lse;
    const void *dout, *delta;
    void *dq, *dk, *dv;
    void* work;
    int64_t work_bytes;
    int64_t rows, n, e, ev;
    double scale;
    int64_t threads;
};

// Shared-keys plan: tiles of up to GROUP x VL queries (tokens [tiles, GROUP * VL], -1 =
// padding) that all attend to keys[t, :counts[t]] (keys [tiles, slots]); the tiles of
// group g (one window: its queries are exactly its keys) are first[g] .. first[g + 1] - 1.
struct NdfShared {
    const int32_t *tokens, *keys, *counts, *first;
    int64_t tiles, slots, groups;
};

// Lane plan (lanes.h): tokens [tiles, VL] (-1 = padding), kind / base [tiles, slots],
// offsets [M, VL] and start [M] for PERM / GATHER slots; the kernel computes the tiles
// list [count].
struct NdfLanes {
    const int32_t *tokens, *kind, *base, *offsets;
    const int64_t* start;
    const int32_t* list;
    int64_t tiles, slots, count;
};

// Stacked plan (stack.h): groups of up to R tiles (tok0 [groups, R], lanes / sig / perm
// [groups], column [groups]), lane indices idx [P, VL] and their folds fold [P, FOLDS + 1,
// VL] plus shift [P] (how the backward adds a permuted vector back), block lists first
// [S + 1], blocks [NB, FIELDS]; chunks [nchunks, 4] (first group, end group, first key
// token, end key token).
struct NdfStack {
    const int32_t *tok0, *lanes, *sig, *perm, *idx, *fold, *shift, *first, *blocks;
    const int64_t *column, *chunks;
    int64_t groups, nchunks;
};
}
