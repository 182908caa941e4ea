"""Volt's training recipe, piece by piece, against definitions: the OneCycle schedule
(PyTorch's own scheduler), the weight average (its update written out) and runs that
evaluate, keep and resume the averaged weights."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ndformer.train import TrainConfig, fit
from ndformer.train.average import WeightAverage, ema_decay
from ndformer.train.step import lr_at
from test_train import TINY, blobs_npz, weights


@given(steps=st.integers(2, 300), rise=st.floats(0.0, 0.9), peak=st.floats(1e-4, 1.0))
def test_onecycle_is_pytorchs_onecycle(steps, rise, peak):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=peak)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=peak, total_steps=steps, pct_start=rise, anneal_strategy="cos",
        cycle_momentum=False, div_factor=25, final_div_factor=1e4, three_phase=False,
    )  # fmt: skip
    config = TrainConfig(task="digits", steps=steps, lr=peak, warmup=rise, schedule="onecycle")
    for step in range(steps):
        assert lr_at(config, step) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-9)
        optimizer.step()
        scheduler.step()


def test_the_weight_average_follows_its_update():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    average = WeightAverage(model, 0.9)
    want = {k: v.clone() for k, v in model.state_dict().items()}
    for n in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(5, 3))  # running stats and the integer batch count move
        average.update(model)
        d = min(0.9, (1 + n) / (10 + n))
        assert ema_decay(0.9, n) == d
        for name, value in model.state_dict().items():
            want[name] = d * want[name] + (1 - d) * value if value.is_floating_point() else value
    for name, value in average.model.state_dict().items():
        torch.testing.assert_close(value, want[name], rtol=1e-6, atol=1e-6)
    assert average.model.state_dict()["1.num_batches_tracked"] == 30
    assert not any(p.requires_grad for p in average.model.parameters())
    restored = WeightAverage(model, 0.9)
    restored.load_state_dict(average.state_dict())
    assert restored.updates == 30 and all(
        torch.equal(a, b)
        for a, b in zip(restored.model.state_dict().values(), average.model.state_dict().values())
    )


def test_an_ema_run_ends_with_the_average_and_resumes_to_the_same_weights(tmp_path):
    data = str(blobs_npz(tmp_path / "blobs.npz"))
    fields = dict(data=data, overrides=TINY, steps=24, batch_size=16, eval_every=6,
                  eval_samples=16, ema=0.9, schedule="onecycle", label_smoothing=0.1,
                  lovasz=True)  # fmt: skip
    straight = fit(TrainConfig(**fields), tmp_path / "straight", progress=False)
    raw = fit(TrainConfig(**{**fields, "ema": 0.0}), tmp_path / "raw", progress=False)
    assert not all(torch.equal(a, b) for a, b in
                   zip(weights(straight.model).values(), weights(raw.model).values()))  # fmt: skip
    fit(TrainConfig(**fields), tmp_path / "resumed", progress=False, stop_after=12)
    resumed = fit(TrainConfig(**fields), tmp_path / "resumed", progress=False, resume=True)
    a, b = weights(straight.model), weights(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    import ndformer

    kept = weights(ndformer.load(tmp_path / "straight"))
    assert all(torch.equal(a[k], kept[k]) for k in a)  # model.safetensors holds the average
    assert resumed.score == straight.score


def test_recipe_settings_are_checked():
    for bad, message in [(dict(schedule="linear"), "schedule must be one of cosine, onecycle"),
                         (dict(label_smoothing=1.0), r"label_smoothing must be in \[0, 1\)"),
                         (dict(ema=1.0), r"ema \(a decay\) must be in \[0, 1\)")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            TrainConfig(task="digits", **bad)


def test_volt_small_has_volt_s_shapes():
    import ndformer

    model = ndformer.create_model("volt-small", in_chans=3, num_classes=13)
    block = model.blocks[0]
    assert len(model.blocks) == 12 and block.attn.dim == 384 and block.attn.heads == 6
    assert block.attn.head_dim == 64 and block.mlp.fc1.weight.shape == (1536, 384)
    assert block.attn.qk_norm and block.attn.rope_base == 100.0
    assert block.attn.rope_split == (12, 12, 8) and model.tokenizer.patch == 5
    width, hidden, head = 384, 1536, 64
    per_block = (3 * width * width + 3 * width) + (width * width + width)  # qkv, proj
    per_block += 2 * width * hidden + hidden + width + 4 * width + 4 * head  # mlp, norms
    assert per_block == 1_774_720
    assert sum(p.numel() for p in model.blocks.parameters()) == 12 * per_block  # 21.3 M
    assert model.config.tokenizer == "linear"  # Volt's own (its shapes: test_volt_tokenizer)
    assert sum(p.numel() for p in model.parameters()) == 23_733_517
    pointnet = ndformer.create_model("volt-small", in_chans=3, num_classes=13, tokenizer="pointnet")
    assert sum(p.numel() for p in pointnet.parameters()) == 21_565_645


def test_volt_base_has_volt_b_shapes():
    import ndformer

    model = ndformer.create_model("volt-base", in_chans=3, num_classes=13)
    block = model.blocks[0]
    assert len(model.blocks) == 12 and block.attn.dim == 768 and block.attn.heads == 12
    assert block.attn.head_dim == 64 and block.attn.rope_split == (12, 12, 8)
    assert model.upsample.width == 256 and model.config.drop_path == 0.3
    width, hidden, head = 768, 3072, 64
    per_block = (3 * width * width + 3 * width) + (width * width + width)  # qkv, proj
    per_block += 2 * width * hidden + hidden + width + 4 * width + 4 * head  # mlp, norms
    assert sum(p.numel() for p in model.blocks.parameters()) == 12 * per_block
    count = sum(p.numel() for p in model.parameters())
    print(f"volt-base: {count:,} parameters")
    assert count == 94_125_581


def test_a_rope_split_that_does_not_fit_is_refused():
    import ndformer

    with pytest.raises(ValueError, match=r"rope_split \(12, 12, 8\) has 3 axes and the model 2"):
        ndformer.create_model("volt-small", ndim=2)
    with pytest.raises(ValueError, match=r"rotates 64 channels, more than the head dim 96 / 3"):
        ndformer.create_model("volt-small", dim=96, heads=3)


def test_scene_mixing_keeps_every_label_with_its_point():
    from ndformer.tasks.points import mix_scenes

    gen = torch.Generator().manual_seed(0)
    parts = []
    for scene in range(5):  # features carry each point's identity; labels a function of it
        n = 20 + scene
        ident = torch.arange(n, dtype=torch.float32) + 100 * scene
        xyz = torch.rand(n, 3, generator=gen) * 4 + torch.tensor([10.0 * scene, -3.0, 1.5])
        parts.append((xyz, ident[:, None], (ident.long() * 7) % 13))
    mixed = mix_scenes(parts, 1.0, gen)
    assert [len(x) for x, _, _ in mixed] == [20 + 21, 22 + 23, 24]  # pairs, and the last alone
    for _, ident, labels in mixed:
        assert torch.equal(labels, (ident[:, 0].long() * 7) % 13)  # labels stay with points
    xyz, ident, _ = mixed[0]
    for scene, part in ((0, slice(0, 20)), (1, slice(20, 41))):
        source = parts[scene][0]
        spot = torch.cat((source[:, :2].mean(0), source[:, 2:].amin(0)))
        torch.testing.assert_close(xyz[part], source - spot)  # each grounded at the origin
    assert mix_scenes(parts, 0.0, gen) == parts


def test_mixing_refuses_grids(tmp_path):
    from ndformer.train import TrainingError

    data = str(blobs_npz(tmp_path / "blobs.npz"))
    with pytest.raises(TrainingError, match=r"--mix mixes point-cloud scenes; .* holds grids"):
        fit(TrainConfig(data=data, overrides=TINY, steps=2, mix=0.5), tmp_path / "r",
            progress=False)  # fmt: skip


def test_hard_distillation_trains_a_second_head_on_the_teachers_labels():
    import ndformer
    from ndformer.point_tokens import PointBatch
    from ndformer.tasks.points import IGNORE
    from ndformer.train.losses import supervised_loss
    from ndformer.train.step import param_groups, train_step

    torch.manual_seed(0)
    student = ndformer.create_model("volt-tiny", in_chans=2, num_classes=4, depth=1, dim=24,
                                    heads=2, voxel_size=0.5, distill_head=True)  # fmt: skip
    teacher = ndformer.create_model("voxconv-tiny", in_chans=2, num_classes=4, dim=8,
                                    voxel_size=0.5)  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    x = PointBatch(torch.rand(200, 3, generator=gen) * 4, torch.randn(200, 2, generator=gen),
                   (torch.arange(200) >= 90).long())  # fmt: skip
    y = torch.randint(0, 4, (200,), generator=gen)
    y[:7] = IGNORE
    config = TrainConfig(task="digits", teacher="conv", distill="hard", distill_alpha=0.5,
                         label_smoothing=0.1, lovasz=True)  # fmt: skip
    with torch.no_grad():
        student.train()
        features = student.forward_features(x)
        supervised = supervised_loss(student.forward_head(features), y, 0.1, True)
        teacher_labels = teacher.eval()(x).argmax(1)
        side = student.distill_head(features)
        labelled = y != IGNORE
        kd = torch.nn.functional.cross_entropy(side[labelled], teacher_labels[labelled])
    before = {k: v.clone() for k, v in student.state_dict().items()}
    optimizer = torch.optim.AdamW(param_groups(student, 0.05), lr=1e-3)
    result = train_step(student, optimizer, config, 0, (x, y), teacher)
    assert result.loss == pytest.approx(float(0.5 * supervised + 0.5 * kd), rel=1e-5)
    after = student.state_dict()
    assert not torch.equal(before["distill_head.1.weight"], after["distill_head.1.weight"])
    with torch.no_grad():  # predictions come from the main head
        torch.testing.assert_close(student.eval()(x),
                                   student.forward_head(student.forward_features(x)))  # fmt: skip


def test_hard_distillation_needs_a_model_with_a_second_head(tmp_path):
    from ndformer.train import TrainingError

    data = str(blobs_npz(tmp_path / "blobs.npz"))
    with pytest.raises(TrainingError, match="--distill hard trains a second head, which vit-tiny"):
        fit(TrainConfig(data=data, overrides=TINY, steps=2, teacher="conv", distill="hard"),
            tmp_path / "r", progress=False)  # fmt: skip
