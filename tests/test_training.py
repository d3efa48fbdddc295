"""The structure network at tiny scale: architecture, checkpoints, augmentation, training."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hydrafm.io.xyz import LABELS  # noqa: E402
from hydrafm.models.checkpoint import CheckpointError, ModelInfo, load_checkpoint, save_checkpoint  # noqa: E402
from hydrafm.models.unet import StructureUNet, UNetConfig  # noqa: E402
from hydrafm.progress import Progress  # noqa: E402
from hydrafm.simulate.afm import SimulationSettings  # noqa: E402
from hydrafm.simulate.dataset import AFMDataset  # noqa: E402
from hydrafm.training.augment import Degradations, degrade, random_crop  # noqa: E402
from hydrafm.training.train import EpochStats, TrainConfig, train  # noqa: E402

TINY = UNetConfig(base_channels=4, levels=2)


def fake_dataset(folder, n=8, shard=4, px=32, seed=0):
    """A dataset folder in the real format whose 'stacks' are dips at O atoms (no ppafm needed)."""
    rng = np.random.default_rng(seed)
    settings = SimulationSettings(n_pixels=px, scan_size=px * 0.2)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"kind": "water", "n": n, "seed": seed, "shard_size": shard, "settings": settings.to_dict(),
                "pool": {"name": "fake"}, "labels": list(LABELS), "format": 1}
    (folder / "dataset.json").write_text(json.dumps(manifest))
    yy, xx = (np.mgrid[0:px, 0:px] + 0.5) * 0.2
    for s in range(n // shard):
        stacks, pos, labels, offsets = [], [], [], [0]
        for _ in range(shard):
            o = rng.uniform(1, px * 0.2 - 1, size=(3, 2))
            img = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 0.5) for x, y in o)
            stacks.append(np.stack([-(1 + 0.1 * k) * img for k in range(10)][::-1]).astype(np.float16))
            pos.append(np.column_stack([o, np.zeros(3)]))
            labels.append(np.zeros(3, np.uint8))
            offsets.append(offsets[-1] + 3)
        np.savez(folder / f"shard_{s:05d}.npz", stacks=np.stack(stacks), positions=np.concatenate(pos),
                 labels=np.concatenate(labels), offsets=np.array(offsets), distance=np.zeros(shard),
                 tilt=np.zeros((shard, 2)), source=np.zeros(shard, int), rejected=np.array(0))
    return AFMDataset(folder)


def test_unet_shapes_and_depth_folding():
    model = StructureUNet(TINY)
    y = model(torch.zeros(2, 1, 10, 32, 48))
    assert y.shape == (2, len(LABELS), 32, 48)
    assert StructureUNet(UNetConfig(base_channels=6, levels=3))(torch.zeros(1, 10, 16, 16)).shape == (1, 6, 16, 16)


def test_checkpoint_roundtrip_and_bad_files(tmp_path):
    model = StructureUNet(TINY)
    info = ModelInfo(config=TINY, provenance={"data": "test"})
    path = save_checkpoint(tmp_path / "m.pt", model, info)
    back, info2, state = load_checkpoint(path)
    assert info2.config == TINY and info2.provenance["data"] == "test" and state is None
    x = torch.randn(1, 1, 10, 16, 16)
    with torch.no_grad():
        assert torch.allclose(back(x), model.eval()(x))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="no such model"):
        load_checkpoint(tmp_path / "missing.pt")


def test_random_crop_cuts_stack_and_maps_alike():
    rng = np.random.default_rng(0)
    stack = np.zeros((10, 32, 32), np.float32)
    stack[:, 5, 20] = -1
    maps = np.zeros((6, 32, 32), np.float32)
    maps[0, 5, 20] = 1
    for _ in range(8):
        s, m = random_crop(stack, maps, 24, rng)
        assert s.shape == (10, 24, 24) and m.shape == (6, 24, 24)
        if m[0].max() > 0:
            assert np.unravel_index(s[0].argmin(), s[0].shape) == np.unravel_index(m[0].argmax(), m[0].shape)
    with pytest.raises(ValueError, match="larger"):
        random_crop(stack, maps, 64, rng)


def test_drift_keeps_the_closest_frame_registered():
    x = torch.randn(1, 10, 32, 32)
    only_drift = Degradations(white=0, pink=0, scan_lines=0, line_jumps=0, plane=0, contrast=0, drift_px=6,
                              cutouts=0)
    moved = False
    for seed in range(4):
        xd, _ = degrade(x, torch.zeros(1, 6, 32, 32), np.random.default_rng(seed), only_drift)
        # undo the random rotation/flip using frame 0, which drift never moves
        views = [torch.rot90(x, k, (-2, -1)) for k in range(4)]
        views += [v.flip(-1) for v in views]
        same0 = [v for v in views if torch.equal(v[0, 0], xd[0, 0])]
        assert len(same0) == 1
        moved |= not torch.equal(same0[0][0, 9], xd[0, 9])
    assert moved


def test_training_batches_are_degraded_validation_batches_are_not(tmp_path):
    from hydrafm.training.train import _batch

    ds = fake_dataset(tmp_path / "ds", n=4)
    samples = [ds[i] for i in range(4)]
    cfg = TrainConfig(crop=None)
    clean, maps = _batch(samples, cfg, None, None)
    again, _ = _batch(samples, cfg, None, None)
    assert clean.shape == (4, 1, 10, 32, 32) and maps.shape[:2] == (4, 6)
    assert torch.equal(clean, again)
    np.testing.assert_allclose(clean.mean(dim=(1, 2, 3, 4)).numpy(), 0, atol=1e-5)
    noisy, _ = _batch(samples, cfg, np.random.default_rng(0), 16)
    assert noisy.shape == (4, 1, 10, 16, 16) and torch.isfinite(noisy).all()


def test_training_learns_resumes_and_fine_tunes(tmp_path):
    ds = fake_dataset(tmp_path / "ds")
    cfg = TrainConfig(epochs=3, batch_size=2, lr=3e-3, crop=None, patience=10,
                      augment=Degradations(white=0, pink=0, scan_lines=0, cutouts=0))
    records = list(train(ds, tmp_path / "m.pt", cfg, TINY))
    stats = [r for r in records if isinstance(r, EpochStats)]
    assert [s.epoch for s in stats] == [1, 2, 3]
    assert any(isinstance(r, Progress) for r in records)
    assert stats[-1].train_loss < stats[0].train_loss
    model, info, _ = load_checkpoint(tmp_path / "m.pt")
    assert info.provenance["train_samples"] == 4 and info.provenance["val_samples"] == 4
    assert info.pixel_size == pytest.approx(0.2)
    # resuming with more epochs continues after the last finished one
    more = [r for r in train(ds, tmp_path / "m.pt", TrainConfig(**{**cfg.__dict__, "epochs": 4}), TINY)
            if isinstance(r, EpochStats)]
    assert [s.epoch for s in more] == [4]
    # fine-tuning starts from the weights of another model and keeps its prediction settings
    info.provenance.update(label_margins={"Na": 0.2}, assembly_prior={"H_down": 0.4})
    save_checkpoint(tmp_path / "m.pt", model, info)
    ft = [r for r in train(ds, tmp_path / "ft.pt", TrainConfig(**{**cfg.__dict__, "epochs": 1}),
                           init_from=tmp_path / "m.pt") if isinstance(r, EpochStats)]
    prov = load_checkpoint(tmp_path / "ft.pt")[1].provenance
    assert ft and prov["initialised_from"].endswith("m.pt")
    assert prov["label_margins"] == {"Na": 0.2} and prov["assembly_prior"] == {"H_down": 0.4}


def test_weight_average_is_the_mean_and_refuses_other_architectures(tmp_path):
    from hydrafm.models.checkpoint import average_checkpoints

    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        paths.append(save_checkpoint(tmp_path / f"s{seed}.pt", StructureUNet(TINY), ModelInfo(config=TINY)))
    model, info = average_checkpoints(paths)
    nets = [load_checkpoint(p)[0].state_dict() for p in paths]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, sum(n[k] for n in nets) / 3)
    assert info.provenance["weight_average_of"] == [str(p) for p in paths]
    other = UNetConfig(base_channels=8, levels=2)
    odd = save_checkpoint(tmp_path / "odd.pt", StructureUNet(other), ModelInfo(config=other))
    with pytest.raises(CheckpointError, match="odd.pt: another architecture"):
        average_checkpoints([paths[0], odd])
    with pytest.raises(CheckpointError, match="at least two"):
        average_checkpoints(paths[:1])


def test_split_by_run_keeps_runs_apart(tmp_path):
    from hydrafm.training.train import split_by_run

    ds = fake_dataset(tmp_path / "ds")
    run_of = np.array([4])  # every fake sample comes from structure 0 → run 4
    tr, va = split_by_run(ds, run_of, val_runs=(4,))
    assert len(tr) == 0 and len(va) == len(ds)
    tr, va = split_by_run(ds, run_of, val_runs=(13,))
    assert len(tr) == len(ds) and len(va) == 0


def _run_benchmark(script: str, tmp_path, monkeypatch, args) -> None:
    """Run benchmarks/<script> on a tiny fake train (8) / validation (4) pair with a tiny pretrained model.

    ``args`` may use the placeholders TR, VA and PRE for the two datasets and the model.
    """
    import runpy
    import sys
    from pathlib import Path

    from hydrafm.models.checkpoint import save_checkpoint

    tr = fake_dataset(tmp_path / "tr", n=8, shard=4, seed=1)
    fake_dataset(tmp_path / "va", n=4, shard=4, seed=2)
    cfg = UNetConfig(base_channels=4)
    pre = save_checkpoint(tmp_path / "pre.pt", StructureUNet(cfg),
                          ModelInfo(config=cfg, pixel_size=tr.settings.pixel_size))
    subst = {"TR": str(tmp_path / "tr"), "VA": str(tmp_path / "va"), "PRE": str(pre)}
    monkeypatch.setattr(sys, "argv", [script] + [subst.get(a, a) for a in args])
    runpy.run_path(str(Path(__file__).parents[1] / "benchmarks" / script), run_name="__main__")


def test_fig4_benchmark_runs_at_tiny_scale(tmp_path, monkeypatch):
    out = tmp_path / "fig4"
    _run_benchmark("fig4_transfer.py", tmp_path, monkeypatch,
                   ["TR", "VA", "--pretrained", "PRE", "--sizes", "2", "4", "--steps", "1", "--batch-size", "2",
                    "--select", "2", "--n-eval", "2", "--crop", "0", "--device", "cpu",
                    "--out", str(out)])
    results = json.loads(out.with_suffix(".json").read_text())
    assert sorted((r["n"], r["mode"]) for r in results) == [(2, "pretrained"), (2, "scratch"), (4, "pretrained"),
                                                             (4, "scratch")]
    assert all(r["stacks"] == 2 for r in results)  # scored on the 2 samples not used to pick the epoch
    assert all(r["top"] == 1.5 and r["label_depth"] is None for r in results)  # the pretrained model's labels
    from hydrafm.models.checkpoint import load_checkpoint

    # both modes train the pretrained model's architecture (base 4 here), only the starting weights differ
    assert {load_checkpoint(out / f"{m}_2.pt")[1].config.base_channels for m in ("scratch", "pretrained")} == {4}
    assert out.with_suffix(".png").exists()


def test_finetune_benchmark_runs_at_tiny_scale(tmp_path, monkeypatch):
    out = tmp_path / "ft.json"
    _run_benchmark("bench_finetune.py", tmp_path, monkeypatch,
                   ["TR", "VA", "--base", "PRE", "-n", "4", "--epochs", "1", "--select", "2", "--n-eval", "2",
                    "--threads", "1", "--out", str(out)])
    results = json.loads(out.read_text())
    assert [r["mode"] for r in results] == ["finetuned", "scratch"] and all(r["stacks"] == 2 for r in results)
