"""Training on the fly: batches simulated on the device, degradations, checkpoints, resume, torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from hydrafm.models.checkpoint import load_checkpoint, save_checkpoint
from hydrafm.models.unet import UNetConfig
from hydrafm.progress import drive
from hydrafm.training.onthefly import (BatchMaker, Degradations, OnTheFlyConfig, ReplayBuffer, default_split,
                                       degrade, train_on_the_fly, cosine_lr, _budget_used)

TINY = OnTheFlyConfig(pools=("water",), batch_size=2, crop=16, steps_per_epoch=2, epochs=2, val_size=4,
                      layer_depth=3.0)


def test_batches_are_simulated_labelled_and_reproducible():
    train, val = default_split("water")
    assert not set(train.indices) & set(val.indices)  # held-out MD runs never trained on
    maker = BatchMaker(TINY, [train], torch.device("cpu"))
    x1, y1 = maker.make(np.random.default_rng(5), 2, degrade_stacks=False)
    x2, y2 = maker.make(np.random.default_rng(5), 2, degrade_stacks=False)
    assert x1.shape == (2, 1, 10, 16, 16) and y1.shape == (2, 6, 16, 16)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.isfinite(x1).all() and float(x1.std()) > 0.5  # normalised, not flat
    assert float(y1.max()) <= 1.0 and float(y1[:, 0].max()) > 0.5  # O blobs peak near 1


def test_label_maps_sit_on_the_atoms():
    maker = BatchMaker(TINY, [default_split("water")[0]], torch.device("cpu"))
    px = maker.pixel
    pos = [np.array([[5.5 * px, 9.5 * px, 0.0], [12.5 * px, 3.5 * px, -0.5]])]
    maps = maker.maps(pos, [np.array([0, 3])])[0]
    assert tuple(np.unravel_index(int(maps[0].argmax()), (16, 16))) == (9, 5)
    assert tuple(np.unravel_index(int(maps[3].argmax()), (16, 16))) == (3, 12)
    assert float(maps[1:3].max()) == 0.0


def test_rotations_move_stack_and_maps_together_and_noise_touches_only_the_stack():
    x = torch.randn(2, 10, 16, 16)
    maps = torch.rand(2, 6, 16, 16)
    off = Degradations(white=0, pink=0, scan_lines=0, line_jumps=0, plane=0, contrast=0, drift_px=0, cutouts=0)
    for seed in range(6):
        xd, md = degrade(x, maps, np.random.default_rng(seed), off)
        # the same geometric transform for both: find it on the maps, check it on the stack
        found = False
        for k in range(4):
            for flip in (False, True):
                a, b = torch.rot90(x, k, (-2, -1)), torch.rot90(maps, k, (-2, -1))
                if flip:
                    a, b = a.flip(-1), b.flip(-1)
                if torch.equal(b, md):
                    assert torch.allclose(a, xd)
                    found = True
        assert found
    for seed in range(6):  # turn=False (data whose atoms must stay put): never turned or flipped
        xd, md = degrade(x, maps, np.random.default_rng(seed), off, turn=False)
        assert torch.equal(md, maps) and torch.allclose(xd, x)
    x0, maps0 = x.clone(), maps.clone()
    xd, md = degrade(x, maps, np.random.default_rng(1), Degradations())
    assert not torch.allclose(xd, x) and xd.shape == x.shape
    assert torch.equal(x, x0) and torch.equal(maps, maps0)  # the batch it was given is left as it was


def test_drift_moves_each_frame_by_its_shift_the_same_on_every_path():
    from hydrafm.training.augment import shift_frames

    x = torch.randn(3, 4, 9, 11)
    x0 = x.clone()
    shift = np.random.default_rng(0).integers(-3, 4, size=(3, 4, 2))
    shift[1] = 0  # a stack without drift stays as it is
    want = torch.stack([torch.stack([torch.roll(x[b, i], tuple(int(v) for v in shift[b, i]), (-2, -1))
                                     for i in range(4)]) for b in range(3)])
    for gather in (False, True):  # the CPU's rolls and the GPU's one gather
        got = shift_frames(x, shift, gather=gather)
        assert torch.equal(got, want)
    assert torch.equal(x, x0)  # the input is not touched
    assert shift_frames(x, np.zeros((3, 4, 2), int)) is x


def test_train_checkpoint_resume_and_minutes(tmp_path):
    out = tmp_path / "m.pt"
    recs = []
    drive(train_on_the_fly(out, TINY, UNetConfig(base_channels=4), device="cpu", cache=tmp_path / "cache"),
          show=False, on_record=recs.append)
    assert [r.epoch for r in recs] == [1, 2] and out.exists()
    model, info, _ = load_checkpoint(out)
    assert info.provenance["on_the_fly"]["pools"] == ["water"] and info.pixel_size == pytest.approx(25 / 128)
    assert len(list((tmp_path / "cache").glob("val-*.pt"))) == 1  # the validation set is cached
    # resume: two more epochs continue from epoch 3
    recs = []
    drive(train_on_the_fly(out, replace(TINY, epochs=4), UNetConfig(base_channels=4), device="cpu",
                           cache=tmp_path / "cache"), show=False, on_record=recs.append)
    assert [r.epoch for r in recs] == [3, 4]
    # resume with a cosine decay (a new schedule continues the same run): 2 more epochs end at lr_final
    recs = []
    drive(train_on_the_fly(out, replace(TINY, epochs=6, lr=2e-3, lr_final=1e-4), UNetConfig(base_channels=4),
                           device="cpu", cache=tmp_path / "cache"), show=False, on_record=recs.append)
    assert [r.epoch for r in recs] == [5, 6]
    assert 1e-4 < recs[0].lr < 2e-3 and recs[1].lr < recs[0].lr
    # resume with stronger noise (experiment-like degradations may change): epoch 7, recorded in the state
    noisy = replace(TINY, epochs=7, degrade=replace(TINY.degrade, white=0.25, pink=0.25))
    recs = []
    drive(train_on_the_fly(out, noisy, UNetConfig(base_channels=4), device="cpu", cache=tmp_path / "cache"),
          show=False, on_record=recs.append)
    assert [r.epoch for r in recs] == [7]
    state = load_checkpoint(out.with_name("m.last.pt"))[2]
    assert state["otf_config"]["degrade"]["white"] == 0.25 and state["otf_config"]["degrade"]["pink"] == 0.25
    # --minutes: stops after the first batch, still scores and keeps a checkpoint
    out2 = tmp_path / "t.pt"
    recs = []
    drive(train_on_the_fly(out2, replace(TINY, minutes=1e-6, epochs=50), UNetConfig(base_channels=4),
                           device="cpu", cache=tmp_path / "cache"), show=False, on_record=recs.append)
    assert len(recs) == 1 and out2.exists()
    # --cpu-minutes: the same on the process's CPU time
    recs = []
    drive(train_on_the_fly(tmp_path / "c.pt", replace(TINY, cpu_minutes=1e-6, epochs=50), UNetConfig(base_channels=4),
                           device="cpu", cache=tmp_path / "cache"), show=False, on_record=recs.append)
    assert len(recs) == 1 and recs[0].cpu_seconds > 0


def test_cosine_lr_follows_the_budget():
    cfg = replace(TINY, lr=1e-3, lr_final=1e-5)
    assert cosine_lr(cfg, 0.0) == pytest.approx(1e-3) and cosine_lr(cfg, 1.0) == pytest.approx(1e-5)
    assert cosine_lr(cfg, 0.5) == pytest.approx(0.5 * (1e-3 + 1e-5))
    assert cosine_lr(replace(cfg, lr_final=None), 0.7) == pytest.approx(1e-3)  # constant without lr_final
    # the first budget to end sets the pace: 30 of 60 minutes beats 1 of 10 epochs
    assert _budget_used(replace(cfg, minutes=60.0), 0.1, 1800.0, 0.0) == pytest.approx(0.5)
    assert _budget_used(replace(cfg, cpu_minutes=10.0), 0.1, 1800.0, 1200.0) == 1.0


def test_torchrun_two_cpu_processes(tmp_path):
    """The CLI under torchrun with 2 processes (gloo): both ranks train, rank 0 writes the model."""
    out = tmp_path / "ddp.pt"
    env = dict(os.environ, HYDRAFM_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1",
               HYDRAFM_DIST_BACKEND="gloo")
    import socket

    with socket.socket() as sock:  # a free port: two test runs on one machine must not collide
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
           "-m", "hydrafm.cli", "train", "--on-the-fly", "-o", str(out), "--epochs", "1",
           "--steps-per-epoch", "2", "--batch-size", "2", "--crop", "16", "--val-size", "2",
           "--base-channels", "4", "--device", "cpu", "--threads", "1"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [json.loads(v) for v in res.stdout.splitlines() if v.startswith("{")]
    epochs = [v for v in lines if "epoch" in v]
    assert len(epochs) == 1  # only rank 0 reports
    _, info, _ = load_checkpoint(out)
    assert info.provenance["world_size"] == 2


def test_training_from_a_checkpoint_needs_nothing_a_bare_gpu_node_lacks(tmp_path):
    """scripts/gpu_onthefly.sh with INIT=...: torch, numpy and scipy only (no ase, napari, OpenCL).

    Its first GPU run (2026-11-27) died on an ``import ase`` reached through the model's path lookup.
    """
    init = tmp_path / "init.pt"
    drive(train_on_the_fly(init, replace(TINY, epochs=1), UNetConfig(base_channels=4, encoder="2d"), device="cpu",
                           cache=tmp_path / "cache"), show=False)
    model, init_info, _ = load_checkpoint(init)
    init_info.provenance["assembly_prior"] = {"H_down": 0.4}
    save_checkpoint(init, model, init_info)
    out = tmp_path / "cont.pt"
    blocked = ["ase", "napari", "pyopencl", "ppafm", "qtpy", "magicgui", "skimage", "matplotlib"]
    code = ("import sys, runpy\n"
            f"for m in {blocked!r}: sys.modules[m] = None  # import m → ImportError\n"
            "sys.argv = ['hydrafm'] + sys.argv[1:]\n"
            "runpy.run_module('hydrafm.cli', run_name='__main__')\n")
    env = dict(os.environ, HYDRAFM_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-c", code, "train", "--on-the-fly", "-o", str(out), "--init-from", str(init),
           "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2", "--crop", "16", "--val-size", "2",
           "--device", "cpu", "--threads", "1"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    _, info, _ = load_checkpoint(out)
    assert info.provenance["initialised_from"] == str(init)
    assert info.provenance["assembly_prior"] == {"H_down": 0.4}  # the initial model's prediction settings


def test_a_different_run_in_the_same_place_is_refused(tmp_path):
    out = tmp_path / "m.pt"
    drive(train_on_the_fly(out, replace(TINY, epochs=1), UNetConfig(base_channels=4), device="cpu",
                           cache=tmp_path / "cache"), show=False)
    with pytest.raises(ValueError, match="different training run"):
        drive(train_on_the_fly(out, replace(TINY, epochs=1, crop=32), UNetConfig(base_channels=4), device="cpu",
                               cache=tmp_path / "cache"), show=False)


def test_2d_encoder_trains_and_round_trips(tmp_path):
    out = tmp_path / "m2d.pt"
    drive(train_on_the_fly(out, replace(TINY, epochs=1), UNetConfig(base_channels=4, encoder="2d"), device="cpu",
                           cache=tmp_path / "cache"), show=False)
    model, info, _ = load_checkpoint(out)
    assert info.config.encoder == "2d"
    assert model(torch.zeros(1, 1, 10, 16, 16)).shape == (1, 6, 16, 16)


def test_replay_buffer_keeps_the_newest_and_samples_from_them():
    buf = ReplayBuffer(3)
    for v in range(5):  # 0..4 pushed; capacity 3 keeps 2, 3, 4
        buf.push(torch.full((1, 2, 4, 4), float(v)), torch.full((1, 6, 4, 4), float(v)))
    x, y = buf.sample(np.random.default_rng(0), 50)
    assert buf.size == 3 and set(x[:, 0, 0, 0].tolist()) == {2.0, 3.0, 4.0}
    assert torch.equal(x[:, 0, 0, 0], y[:, 0, 0, 0])  # stacks stay with their maps
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(2).sample(np.random.default_rng(0), 1)


def test_replay_trains_more_samples_than_it_simulates(tmp_path):
    out = tmp_path / "r.pt"
    recs = []
    cfg = replace(TINY, epochs=1, steps_per_epoch=6, sim_share=1e-9, buffer=8)
    drive(train_on_the_fly(out, cfg, UNetConfig(base_channels=4), device="cpu", cache=tmp_path / "cache"),
          show=False, on_record=recs.append)
    (rec,) = recs
    # a first batch is always simulated; with a share of ~0 the other 5 steps replay it
    assert rec.new_samples_per_s * 6 == pytest.approx(rec.samples_per_s, rel=1e-6)
    _, info, _ = load_checkpoint(out)
    assert info.provenance["on_the_fly"]["sim_share"] == pytest.approx(1e-9)
