"""The typed native interface: ctypes mirrors of the C++ argument structs (cpp/abi.h) and
the constants the library reports. ``check`` compares every struct's size and field
offsets with what the compiled library says, so a drift between the two languages is a
clear "unavailable" reason instead of a crash.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

_p, _i64, _f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double


class NdfCall(ctypes.Structure):
    """The tensors of one call (see cpp/abi.h): q, k, v, out, lse, dout, delta, dq, dk, dv
    as data pointers (0 = not used), scratch, sizes, scale, threads."""

    _fields_ = [
        ("q", _p), ("k", _p), ("v", _p), ("out", _p), ("lse", _p), ("dout", _p),
        ("delta", _p), ("dq", _p), ("dk", _p), ("dv", _p), ("work", _p), ("work_bytes", _i64),
        ("rows", _i64), ("n", _i64), ("e", _i64), ("ev", _i64), ("scale", _f64),
        ("threads", _i64),
    ]  # fmt: skip


class NdfShared(ctypes.Structure):
    """A shared-keys plan (``SharedPlan``)."""

    _fields_ = [
        ("tokens", _p), ("keys", _p), ("counts", _p), ("first", _p), ("tiles", _i64),
        ("slots", _i64), ("groups", _i64),
    ]  # fmt: skip


class NdfLanes(ctypes.Structure):
    """A lane plan (``LanePlan``) and the tiles the lane kernel computes."""

    _fields_ = [
        ("tokens", _p), ("kind", _p), ("base", _p), ("offsets", _p), ("start", _p),
        ("list", _p), ("tiles", _i64), ("slots", _i64), ("count", _i64),
    ]  # fmt: skip


class NdfStack(ctypes.Structure):
    """A stacked plan (``StackPlan``)."""

    _fields_ = [
        ("tok0", _p), ("lanes", _p), ("sig", _p), ("perm", _p), ("idx", _p), ("fold", _p),
        ("shift", _p), ("first", _p), ("blocks", _p), ("column", _p), ("chunks", _p),
        ("groups", _i64), ("nchunks", _i64),
    ]  # fmt: skip


STRUCTS = (NdfCall, NdfShared, NdfLanes, NdfStack)
#: The ABI version this module mirrors (``ndf_abi`` reports the library's).
VERSION = 1


@dataclass(frozen=True)
class Constants:
    """What the compiled library plans with (cpp/*.h): lanes per register, register count,
    slot kinds, tile and block sizes, whether it was built with OpenMP."""

    lanes_f32: int
    lanes_f64: int
    registers: int
    skip: int
    shift: int
    bcast: int
    perm: int
    gather: int
    shared_group: int
    stack: int
    stack_fields: int
    stack_columns_f32: int
    stack_columns_f64: int
    folds: int
    openmp: bool


def read(lib: ctypes.CDLL) -> tuple[Constants, str | None]:
    """The library's constants, and None if its structs match ours (else what differs)."""
    fn = lib.ndf_abi
    fn.restype = _i64
    fn.argtypes = [ctypes.POINTER(_i64), _i64]
    out = (_i64 * 256)()
    fn(out, 256)
    values = list(out[1 : out[0] + 1])
    if values[0] != VERSION:
        return None, f"the compiled kernels speak ABI {values[0]}, this module {VERSION}"
    count = len(Constants.__dataclass_fields__)
    constants = Constants(*values[1 : 1 + count])
    at = 1 + count
    for struct in STRUCTS:
        fields = struct._fields_
        size, offsets = values[at], values[at + 1 : at + 1 + len(fields)]
        at += 1 + len(fields)
        ours = [getattr(struct, name).offset for name, _ in fields]
        if size != ctypes.sizeof(struct) or offsets != ours:
            return constants, (
                f"{struct.__name__} differs between C++ (size {size}, offsets {offsets}) and"
                f" Python (size {ctypes.sizeof(struct)}, offsets {ours})"
            )
    return constants, None


def declare(lib: ctypes.CDLL) -> None:
    """Argument and result types of every entry point."""
    for suffix in ("f32", "f64"):
        for name, args, result in (
            ("shared_forward", [NdfCall, NdfShared], None),
            ("shared_backward", [NdfCall, NdfShared], None),
            ("lanes_forward", [NdfCall, NdfLanes, NdfStack], ctypes.c_int),
            ("lanes_backward", [NdfCall, NdfLanes, NdfStack], ctypes.c_int),
        ):
            fn = getattr(lib, f"ndf_{name}_{suffix}")
            fn.argtypes = [ctypes.POINTER(a) for a in args]
            fn.restype = result
        fn = getattr(lib, f"ndf_lanes_work_{suffix}")
        fn.argtypes = [ctypes.POINTER(NdfCall), ctypes.POINTER(NdfLanes),
                       ctypes.POINTER(NdfStack), ctypes.c_int]  # fmt: skip
        fn.restype = _i64
