"""Fuzzing the parsers users feed: spec strings, and each data loader on randomly corrupted
files (truncation, bit flips, wrong dtypes, NaN, missing parts). Every outcome is a
result or a clean one-line ``ValueError`` naming the file; a refused run writes nothing."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("plyfile")
pytest.importorskip("nibabel")

from faults import image_folder, medmnist, nifti_csv, point_folder, snapshot
from ndformer.patterns import Pattern, pattern
from ndformer.tasks import load_data
from ndformer.train import TrainConfig, fit

FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SPECS = [
    "window(8, shift=4)",
    "neighborhood((7, 5), dilation=2)",
    "headsplit(stripe(0, 7), stripe(1, 7))",
    "window(8) | axial(0)",
    "serialized('hilbert', 64)",
    "pooled(4)",
]
ALPHABET = "()|&,=._-+*'\"[]{}0123456789 abcdefghijklmnopqrstuvwxyz"
#: Longest mutated spec: four times the parser's limit. Six unbounded repeats of up to 400
#: times once built a string of terabytes (CI's suite was OOM-killed generating it).
MAX_TEXT = 8000


@st.composite
def mutated_specs(draw) -> str:
    """A valid spec with random edits (insert, delete, replace, repeat a slice)."""
    text = draw(st.sampled_from(SPECS))
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "repeat"]))
        char = draw(st.sampled_from(ALPHABET))
        if kind == "insert":
            text = text[:i] + char + text[i:]
        elif kind == "delete":
            text = text[:i] + text[i + 1 :]
        elif kind == "replace":
            text = text[:i] + char + text[i + 1 :]
        else:  # repeated, up to MAX_TEXT characters (past the parser's length limit)
            piece, times = text[i:], draw(st.integers(2, 400))
            times = min(times, max(1, (MAX_TEXT - i) // max(1, len(piece))))
            text = text[:i] + piece * times
    return text


def _clean(error: ValueError) -> str:
    message = str(error)
    assert message and "\n" not in message and "Traceback" not in message, message
    return message


@FUZZ
@given(st.one_of(mutated_specs(), st.text(ALPHABET, max_size=200)))
def test_spec_parser_gives_a_pattern_or_a_clean_error(text):
    try:
        result = pattern(text)
    except ValueError as error:
        _clean(error)
    else:
        assert isinstance(result, Pattern)


def _valid_source(kind: str, root: Path) -> Path:
    if kind == "npz":
        return medmnist(root / "data.npz")
    if kind == "ply":
        return point_folder(root / "scenes", scenes=3)
    if kind == "png":
        return image_folder(root / "images")
    return nifti_csv(root / "nii", volumes=4)


def _victim(kind: str, source: Path) -> Path:
    """The file a corruption hits."""
    if kind == "npz":
        return source
    if kind == "ply":
        return source / "scene1.ply"
    if kind == "png":
        return source / "b" / "2.png"
    return source.parent / "v1.nii.gz"


def _corrupt(kind: str, path: Path, how: str, data) -> None:
    raw = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(raw[: data.draw(st.integers(0, max(0, len(raw) - 1)))]))
    elif how == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= 1 << data.draw(st.integers(0, 7))
        path.write_bytes(bytes(raw))
    elif how == "semantic" and kind == "npz":
        change = data.draw(st.sampled_from(["nan", "dtype", "missing", "shape", "labels"]))
        arrays = dict(np.load(path))
        if change == "nan":
            arrays["val_images"] = arrays["val_images"].astype(np.float32)
            arrays["val_images"][0, 0, 0] = np.nan
        elif change == "dtype":
            arrays["train_labels"] = arrays["train_labels"].astype(np.float32) + 0.5
        elif change == "missing":
            del arrays[data.draw(st.sampled_from(sorted(arrays)))]
        elif change == "shape":
            arrays["test_images"] = arrays["test_images"][:, :4]
        else:
            arrays["test_labels"] = arrays["test_labels"] - 7
        with open(path, "wb") as handle:
            np.savez(handle, **arrays)
    elif how == "semantic":  # other formats: an empty file where one was expected
        path.write_bytes(b"")


@FUZZ
@given(
    kind=st.sampled_from(["npz", "ply", "png", "nii"]),
    how=st.sampled_from(["truncate", "flip", "semantic"]),
    data=st.data(),
)
def test_loaders_on_corrupted_files(kind, how, data):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = _valid_source(kind, root)
        victim = _victim(kind, source)
        _corrupt(kind, victim, how, data)
        try:
            load_data(source)
        except ValueError as error:
            message = _clean(error)
            assert str(source.parent) in message or source.name in message, message
        else:
            return  # a harmless corruption (e.g. a flipped pixel): the data are valid
        out = root / "run"
        config = TrainConfig(data=str(source), steps=1, batch_size=2)
        with pytest.raises(ValueError):
            fit(config, out, progress=False)
        assert snapshot(out) == {} and not out.exists()
