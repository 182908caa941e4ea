"""Data-parallel training in several processes (gloo on CPU): ``ndformer train --nproc 2``
trains the same weights as one process with the same global batch, and a run stopped in
two processes resumes in one to the same end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from faults import SRC, cli

WORKER = """
import json, sys
from ndformer.train import TrainConfig, fit
from ndformer.train.distributed import finish, world
config = TrainConfig(**json.loads(sys.argv[1]))
fit(config, sys.argv[2], progress=False, stop_after=int(sys.argv[3]))
finish(world())
"""


def weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:  # float sums in another order: equal to float32 precision
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-4, atol=2e-6, msg=name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same run in two processes (``ndformer train --nproc 2``) and, with the settings
    that run recorded, in one."""
    from ndformer.train import TrainConfig, fit, read_run

    root = tmp_path_factory.mktemp("ddp")
    args = ["train", "--task", "digits", "--model", "vit-tiny", "--overrides",
            json.dumps({"depth": 1, "dim": 32, "heads": 2}), "--steps", "6", "--batch-size",
            "8", "--eval-every", "3"]  # fmt: skip
    two = cli(*args, "--nproc", "2", "--out", str(root / "two"), timeout=300)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("run directory:") == 1  # rank 0 alone reports
    fit(TrainConfig(**read_run(root / "two")["train"]), root / "one", progress=False)
    return root


def test_two_processes_train_the_weights_of_one(runs):
    assert_same_weights(runs / "one", runs / "two")
    for run in ("one", "two"):
        info = json.loads((runs / run / "run.json").read_text())
        assert info["status"] == "done" and info["steps_done"] == 6
    # rank 0 alone logged: one header and one row per validation
    lines = (runs / "two" / "metrics.csv").read_text().splitlines()
    assert len(lines) == 3
    losses = [[float(r.split(",")[2]) for r in (runs / run / "metrics.csv").read_text()
               .splitlines()[1:]] for run in ("one", "two")]  # fmt: skip
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)  # the global batch's loss


def test_a_run_stopped_in_two_processes_resumes_in_one(runs, tmp_path):
    from ndformer.train import TrainConfig, fit, read_run

    settings = read_run(runs / "one")["train"]
    out = tmp_path / "stopped"
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node=2", str(script), json.dumps(settings), str(out), "3"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    fit(TrainConfig(**settings), out, resume=True, progress=False)  # one process
    assert_same_weights(runs / "one", out)


def test_several_processes_refuse_what_they_cannot_split(tmp_path):
    done = cli("train", "--task", "digits", "--steps", "2", "--nproc", "0", "--out",
               str(tmp_path / "r"))  # fmt: skip
    assert done.returncode != 0 and "--nproc must be >= 1, got 0" in done.stderr


def test_the_shares_of_a_global_batch_partition_it():
    from ndformer.train.distributed import World, share

    x, y = torch.arange(10)[:, None].float(), torch.arange(10)
    for size in (1, 2, 3, 4):
        parts = [share((x, y), World(rank, size)) for rank in range(size)]
        assert torch.equal(torch.cat([p[1] for p in parts]), y)  # each sample once, in order
        assert all(torch.equal(px[:, 0].long(), py) for px, py in parts)
