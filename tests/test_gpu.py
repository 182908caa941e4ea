"""Contract tests on a CUDA device (skipped without one; ``scripts/gpu_check.py`` runs
them): every pattern family through ``auto`` and through each CUDA backend that takes it
(NATTEN when installed, FlexAttention, tiled, block-sparse) equals the reference on the
GPU, values and gradients, float32 without TF32."""

from __future__ import annotations

import pytest
import torch

from ndformer import Grid, attend
from ndformer.backends import Call
from ndformer.choice import chosen, unsupported
from ndformer.patterns import pattern as parse

if not torch.cuda.is_available():  # pragma: no cover - this machine has no GPU
    pytest.skip("no CUDA device: run scripts/gpu_check.py on a GPU machine",
                allow_module_level=True)  # fmt: skip

CASES = [
    ("neighborhood(7)", (32, 32)),
    ("neighborhood(3, dilation=2, causal=(True, False))", (16, 24)),
    ("neighborhood(5, stride=2)", (12, 12, 12)),
    ("window(8)", (32, 32)),
    ("window(7, shift=3)", (30, 31)),
    ("axial(0)", (16, 16)),
    ("neighborhood(3) | causal(0)", (16, 16)),
    ("headsplit(window(4), neighborhood(3))", (16, 16)),
    ("neighborhood(3)", (6, 6, 6, 6)),
    ("full", (16, 16)),
    ("pooled(2)", (16, 16)),
]


@pytest.fixture(autouse=True)
def exact_float32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def values_and_grads(fn, q, k, v):
    out = fn(q, k, v)
    upstream = torch.randn(out.shape, generator=torch.Generator("cuda").manual_seed(1),
                           device="cuda")  # fmt: skip
    return (out.detach(), *torch.autograd.grad((out * upstream).sum(), (q, k, v)))


@pytest.mark.parametrize(("spec", "shape"), CASES)
def test_every_cuda_backend_equals_the_reference(spec, shape):
    grid = Grid(shape)
    gen = torch.Generator("cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 4, grid.num_tokens, 32, generator=gen, device="cuda",
                           requires_grad=True) for _ in range(3))  # fmt: skip
    want = values_and_grads(lambda *x: attend(*x, spec, grid, backend="reference"), q, k, v)
    call = Call(parse(spec), grid, q.device, q.dtype, 4, 32, True)
    backends = ["auto"] + [n for n in ("natten", "flex", "tiled", "blocksparse")
                           if unsupported(n, call) is None]  # fmt: skip
    print(f"{spec} on {shape}: auto takes {chosen(call)}; also {backends[1:]}")
    for backend in backends:
        got = values_and_grads(lambda *x, b=backend: attend(*x, spec, grid, backend=b), q, k, v)
        for name, a, b in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
            label = f"{backend} {name}"
            torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-5,
                                       msg=lambda m, label=label: f"{label}: {m}")  # fmt: skip
