"""Spec strings: parsing, round trips, and errors that name the problem."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import ndformer
from ndformer.patterns import (
    Axial,
    Causal,
    Full,
    HeadSplit,
    Intersection,
    Neighborhood,
    Stripe,
    Union,
    Window,
    list_patterns,
    pattern,
)
from strategies import any_pattern, shapes


@given(data=st.data())
def test_repr_is_a_spec_that_round_trips(data):
    shape = data.draw(shapes())
    _, p = data.draw(any_pattern(shape, heads=data.draw(st.integers(1, 6))))
    assert pattern(repr(p)) == p
    assert repr(pattern(repr(p))) == repr(p)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("full", Full()),
        ("full()", Full()),
        ("window(8, shift=4)", Window(8, shift=4)),
        ("Window(8, 4)", Window(8, shift=4)),
        ("window((8, 4), dilation=(1, 2))", Window((8, 4), dilation=(1, 2))),
        ("neighborhood(7, dilation=2)", Neighborhood(7, dilation=2)),
        ("neighborhood(3, causal=(True, False))", Neighborhood(3, causal=(True, False))),
        ("axial(0)", Stripe(0, 1)),
        ("axial(-1)", Axial(-1)),
        ("stripe(1, width=7)", Stripe(1, 7)),
        ("causal", Causal(0)),
        ("causal(axis=2)", Causal(2)),
        ("headsplit(stripe(0, 7), stripe(1, 7))", HeadSplit(Stripe(0, 7), Stripe(1, 7))),
        (
            "headsplit(full, window(4), fractions=(0.25, 0.75))",
            HeadSplit(Full(), Window(4), fractions=(0.25, 0.75)),
        ),
        ("window(8) | axial(0)", Union(Window(8), Axial(0))),
        ("window(8) & causal | axial(1)", Union(Intersection(Window(8), Causal()), Axial(1))),
        ("window(8) & (causal | axial(1))", Intersection(Window(8), Union(Causal(), Axial(1)))),
        ("union(window(2), axial(0))", Window(2) | Axial(0)),
        ("  window( 8 )  ", Window(8)),
    ],
)
def test_parse_examples(spec, expected):
    assert pattern(spec) == expected


def test_pattern_objects_pass_through():
    p = Window(4)
    assert pattern(p) is p
    assert ndformer.pattern("full") == Full()


def test_repr_examples():
    assert repr(Window(8, shift=4)) == "window(8, shift=4)"
    assert repr(Neighborhood(7, dilation=2)) == "neighborhood(7, dilation=2)"
    assert repr(Axial(0)) == "axial(0)"
    assert repr(HeadSplit(Stripe(0, 7), Stripe(1, 7))) == "headsplit(stripe(0, 7), stripe(1, 7))"
    assert repr(Window(8) & (Causal() | Axial(1))) == "window(8) & (causal | axial(1))"


def test_registry_lists_every_core_pattern():
    assert set(list_patterns()) >= {
        "full",
        "window",
        "neighborhood",
        "stripe",
        "axial",
        "causal",
        "headsplit",
    }


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("windw(8)", "unknown pattern 'windw'"),
        ("window", "missing a required argument: 'size'"),
        ("window(8, sise=2)", "unexpected keyword argument 'sise'"),
        ("window(0)", "Window size must be >= 1"),
        ("window(2.5)", "Window size must be an int"),
        ("neighborhood(7, causal=1)", "Neighborhood causal must be a bool"),
        ("window(8", "syntax error"),
        ("", "empty spec"),
        ("__import__('os').system('true')", "unexpected"),
        ("window(8).size", "unexpected"),
        ("window(*[8])", "not allowed"),
        ("window(8) + axial(0)", "unexpected"),
        ("headsplit(1, 2)", "HeadSplit argument 0 must be a pattern"),
        ("headsplit(full, full, fractions=(0.5, 0.2))", "sum to 1"),
        ("window(8) | 3", "unexpected"),
        ("lambda: 0", "unexpected"),
    ],
)
def test_bad_specs_raise_value_error_naming_the_problem(spec, message):
    with pytest.raises(ValueError, match="invalid pattern spec") as info:
        pattern(spec)
    assert message in str(info.value)
    assert "Valid patterns: axial, causal, flattened, full" in str(info.value)


def test_non_string_spec_is_rejected():
    with pytest.raises(ValueError, match="spec string or a Pattern"):
        pattern(8)
