"""The log-sum-exp (``attend(..., return_lse=True)``), extra global tokens (``extra_k``,
``extra_v``) and ``merge_attentions``: each equal to its definition written out here —
scores under the pattern's mask, their logsumexp, SDPA over the tokens followed by the
extra ones — in values and gradients (float64), every pattern family, 1-D to 4-D grids
and points."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ndformer import Grid, Points, attend, merge_attentions, pattern
from ndformer.backends import Call
from ndformer.choice import choose
from ndformer.patterns import Serialized
from strategies import any_pattern, shapes

TIGHT = {"rtol": 1e-10, "atol": 1e-12}


def randn(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def definition(q, k, v, mask, scale):
    """out and lse from the scores written out: lse_i = log sum over allowed j of
    exp(scale q_i . k_j); out_i = sum_j exp(s_ij - lse_i) v_j."""
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    return torch.exp(scores - lse[..., None]) @ v, lse


def values_and_grads(outputs, inputs, upstream):
    """The outputs and the gradients of sum(output * upstream) over all outputs."""
    loss = sum((o * u).sum() for o, u in zip(outputs, upstream, strict=True))
    return (*(o.detach() for o in outputs), *torch.autograd.grad(loss, inputs))


def assert_all_close(got, want, names):
    for name, a, b in zip(names, got, want, strict=True):
        torch.testing.assert_close(a, b, **TIGHT, msg=lambda m, n=name: f"{n}: {m}")


@given(data=st.data())
def test_the_log_sum_exp_and_its_gradient_match_the_definition(data):
    shape = data.draw(shapes(), label="shape")
    heads = data.draw(st.integers(1, 3), label="heads")
    _, pattern = data.draw(any_pattern(shape, heads), label="pattern")
    backend = data.draw(st.sampled_from(["auto", "blocksparse", "reference"]), label="backend")
    scale = data.draw(st.floats(0.2, 2.0), label="scale")
    grid = Grid(shape)
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 99), label="seed"))
    n = grid.num_tokens
    q, k, v = (randn(gen, 2, heads, n, d).requires_grad_() for d in (4, 4, 3))
    upstream = (randn(gen, 2, heads, n, 3), randn(gen, 2, heads, n))
    got = attend(q, k, v, pattern, grid, backend=backend, scale=scale, return_lse=True)
    want = definition(q, k, v, pattern.mask(grid, heads), scale)
    assert_all_close(values_and_grads(got, (q, k, v), upstream),
                     values_and_grads(want, (q, k, v), upstream),
                     ("out", "lse", "dq", "dk", "dv"))  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "shape"),
    [
        ("neighborhood(5)", (9, 11)),  # the lane / stacked kernels
        ("neighborhood(3, dilation=2, causal=(True, False))", (7, 9)),
        ("window(4, shift=2)", (10, 6)),  # the shared-keys kernel
        ("stripe(1, 3)", (5, 7)),
        ("full", (6, 5)),  # native takes full attention when the lse is wanted
        ("neighborhood(3)", (5, 4, 6)),
    ],
)
def test_the_native_kernels_return_the_log_sum_exp_and_take_its_gradient(spec, shape):
    """The native backward takes d lse as ``delta - dlse``: without it dq and dk differ."""
    grid = Grid(shape)
    gen = torch.Generator().manual_seed(len(spec))
    q, k, v = (randn(gen, 2, 2, grid.num_tokens, d).requires_grad_() for d in (5, 5, 3))
    upstream = (randn(gen, 2, 2, grid.num_tokens, 3), randn(gen, 2, 2, grid.num_tokens))
    got = attend(q, k, v, spec, grid, backend="native", return_lse=True)
    want = definition(q, k, v, pattern(spec).mask(grid, 2), 5**-0.5)
    assert_all_close(values_and_grads(got, (q, k, v), upstream),
                     values_and_grads(want, (q, k, v), upstream),
                     ("out", "lse", "dq", "dk", "dv"))  # fmt: skip


def test_groups_of_points_return_the_log_sum_exp():
    gen = torch.Generator().manual_seed(3)
    points = Points(torch.randint(0, 12, (90, 3), generator=gen),
                    batch=torch.randint(0, 2, (90,), generator=gen))  # fmt: skip
    groups = Serialized("z", group=16, shift=8)
    q, k, v = (randn(gen, 1, 2, 90, d).requires_grad_() for d in (6, 6, 4))
    upstream = (randn(gen, 1, 2, 90, 4), randn(gen, 1, 2, 90))
    got = attend(q, k, v, groups, points, backend="native", return_lse=True)
    want = definition(q, k, v, groups.mask(points, 2), 6**-0.5)
    assert_all_close(values_and_grads(got, (q, k, v), upstream),
                     values_and_grads(want, (q, k, v), upstream),
                     ("out", "lse", "dq", "dk", "dv"))  # fmt: skip


@given(data=st.data())
def test_extra_tokens_join_the_pattern_s_keys_in_one_softmax(data):
    shape = data.draw(shapes(), label="shape")
    kv_heads = data.draw(st.integers(1, 2), label="kv_heads")
    heads = kv_heads * data.draw(st.integers(1, 2), label="group")
    _, pattern = data.draw(any_pattern(shape, heads), label="pattern")
    extra = data.draw(st.integers(1, 4), label="extra tokens")
    return_lse = data.draw(st.booleans(), label="return_lse")
    grid = Grid(shape)
    n = grid.num_tokens
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 99), label="seed"))
    q = randn(gen, 2, heads, n, 4).requires_grad_()
    k, v = (randn(gen, 2, kv_heads, n, d).requires_grad_() for d in (4, 3))
    ek, ev = (randn(gen, 2, kv_heads, extra, d).requires_grad_() for d in (4, 3))
    inputs = (q, k, v, ek, ev)
    got = attend(q, k, v, pattern, grid, extra_k=ek, extra_v=ev, return_lse=return_lse)
    got = got if return_lse else (got,)
    # the definition: the tokens followed by the extra ones, every query seeing the extras
    mask = pattern.mask(grid, heads).expand(heads, n, n)
    mask = torch.cat([mask, torch.ones(heads, n, extra, dtype=torch.bool)], dim=-1)
    keys = torch.cat([k, ek], dim=2).repeat_interleave(heads // kv_heads, dim=1)
    values = torch.cat([v, ev], dim=2).repeat_interleave(heads // kv_heads, dim=1)
    want = definition(q, keys, values, mask, 0.5)
    want = want if return_lse else want[:1]
    upstream = [randn(gen, *x.shape) for x in want]
    names = (*("out", "lse")[: len(want)], "dq", "dk", "dv", "d extra_k", "d extra_v")
    assert_all_close(values_and_grads(got, inputs, upstream),
                     values_and_grads(want, inputs, upstream), names)  # fmt: skip


@given(
    n=st.integers(1, 12),
    m=st.integers(2, 12),
    seed=st.integers(0, 99),
)
def test_merging_two_disjoint_key_sets_is_attention_over_their_union(n, m, seed):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = randn(gen, 1, 2, n, 3), randn(gen, 1, 2, m, 3), randn(gen, 1, 2, m, 2)
    inputs = [x.requires_grad_() for x in (q, k, v)]
    split = torch.rand(m, generator=gen) < 0.5
    split[0], split[-1] = True, False  # both sets non-empty
    first = split.expand(n, m)
    one = definition(q, k, v, first, 0.7)
    two = definition(q, k, v, ~first, 0.7)
    got = merge_attentions(*one, *two)
    want = definition(q, k, v, torch.ones(n, m, dtype=torch.bool), 0.7)
    upstream = [randn(gen, *x.shape) for x in want]
    assert_all_close(values_and_grads(got, inputs, upstream),
                     values_and_grads(want, inputs, upstream),
                     ("out", "lse", "dq", "dk", "dv"))  # fmt: skip
    swapped = merge_attentions(*two, *one)
    for a, b in zip(swapped, got, strict=True):
        torch.testing.assert_close(a, b.detach(), **TIGHT)


def test_an_empty_key_set_contributes_nothing_and_both_empty_give_zeros():
    gen = torch.Generator().manual_seed(0)
    out = randn(gen, 2, 5, 3).requires_grad_()
    lse = randn(gen, 2, 5).requires_grad_()
    none_out, none_lse = torch.zeros(2, 5, 3, dtype=torch.float64), torch.full((2, 5), -torch.inf)
    merged, merged_lse = merge_attentions(out, lse, none_out, none_lse.double())
    torch.testing.assert_close(merged, out.detach(), **TIGHT)
    torch.testing.assert_close(merged_lse, lse.detach(), **TIGHT)
    empty, empty_lse = merge_attentions(none_out, none_lse, none_out, none_lse)
    assert torch.equal(empty, none_out) and torch.equal(empty_lse, none_lse)
    grads = torch.autograd.grad((merged.sum() + merged_lse.sum()), (out, lse))
    assert all(torch.isfinite(g).all() for g in grads)


def test_bad_extra_tokens_and_merges_are_refused_with_the_shapes():
    q = k = v = torch.randn(1, 2, 12, 4)
    with pytest.raises(ValueError, match="extra_k and extra_v come together; got only extra_k"):
        attend(q, k, v, "neighborhood(3)", (3, 4), extra_k=torch.randn(1, 2, 1, 4))
    with pytest.raises(ValueError, match=r"extra_k \(1, 2, 2, 4\), extra_v \(1, 2, 3, 4\)"):
        attend(q, k, v, "neighborhood(3)", (3, 4), extra_k=torch.randn(1, 2, 2, 4),
               extra_v=torch.randn(1, 2, 3, 4))  # fmt: skip
    with pytest.raises(ValueError, match=r"q.s dtype torch\.float32"):
        attend(q, k, v, "neighborhood(3)", (3, 4), extra_k=torch.randn(1, 2, 2, 4).double(),
               extra_v=torch.randn(1, 2, 2, 4).double())  # fmt: skip
    with pytest.raises(ValueError, match=r"lse1 \(2, 5\).*lse2 \(2, 4\)"):
        merge_attentions(torch.zeros(2, 5, 3), torch.zeros(2, 5), torch.zeros(2, 5, 3),
                         torch.zeros(2, 4))  # fmt: skip


def test_patterns_over_new_keys_say_they_have_no_log_sum_exp():
    q = k = v = torch.randn(1, 2, 16, 4)
    with pytest.raises(ValueError, match="log-sum-exp"):
        attend(q, k, v, "pooled(2)", (4, 4), return_lse=True)


def test_the_choice_with_and_without_the_log_sum_exp():
    """Full attention goes to SDPA unless the lse is wanted (SDPA on CPU has none): then
    the native kernels take it; the tiled path gives way to the block-sparse one."""

    def chosen(spec, lse, shape=(8, 8)):
        call = Call(pattern(spec), Grid(shape), torch.device("cpu"), torch.float32, 2, 8,
                    False, lse)  # fmt: skip
        return choose(call).name

    assert chosen("full", False) == "sdpa" and chosen("full", True) == "native"
    assert chosen("neighborhood(3)", True) == "native"
    assert chosen("neighborhood(3)", False) == "native"
    assert chosen("neighborhood(3) | causal(0)", True) == "blocksparse"
    half = Call(pattern("neighborhood(3)"), Grid((8, 8)), torch.device("cpu"), torch.bfloat16,
                2, 8, False, True)  # fmt: skip
    assert choose(half).name == "blocksparse"  # native takes float32/64 only


def test_half_precision_returns_a_float32_log_sum_exp():
    q = k = v = torch.randn(1, 2, 20, 8, dtype=torch.bfloat16)
    out, lse = attend(q, k, v, "neighborhood(3)", (4, 5), return_lse=True)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    mask = pattern("neighborhood(3)").mask(Grid((4, 5)))
    _, want = definition(q.float(), k.float(), v.float(), mask, 8**-0.5)
    torch.testing.assert_close(lse, want, rtol=2e-2, atol=2e-2)
