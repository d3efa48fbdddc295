"""The depth network: targets, training, and molecules placed at their depth by Predict and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase import Atoms

from hydrafm.cli import main
from hydrafm.io.xyz import read_xyz
from hydrafm.models.checkpoint import CheckpointError, ModelInfo, save_checkpoint
from hydrafm.models.depth import DepthInfo, DepthNet, depth_map, load_depth, save_depth
from hydrafm.models.preprocess import normalize_stack
from hydrafm.models.unet import StructureUNet, UNetConfig
from hydrafm.paths import pool_path
from hydrafm.predict.depth import place_at_depth, resolve_depth
from hydrafm.predict.predictor import iter_predict_maps
from hydrafm.progress import drive
from hydrafm.simulate.dataset import make_dataset
from hydrafm.simulate.settings import SimulationSettings
from hydrafm.stack import AFMStack
from hydrafm.structures.pool import StructurePool
from hydrafm.training.depth import DepthConfig, depth_targets, train_depth

SMALL = DepthInfo(base_channels=4, levels=2, pixel_size=0.2)


def _stack(rng, n=10, px=32):
    yy, xx = np.mgrid[0:px, 0:px]
    frames = [np.cos(xx / 2.0 + k * 0.1) * np.sin(yy / 3.0) * (1 + 0.1 * k) for k in range(n)]
    return (np.stack(frames) + 0.01 * rng.normal(size=(n, px, px))).astype(np.float32)


def test_targets_carry_each_visible_heavy_atoms_depth_below_the_probe():
    # O at (x 2.1, y 1.1, z 0), a deeper O at (4.1, 3.1, -1.0), an H on top, an O too deep to see
    pos = np.array([[2.1, 1.1, 0.0], [4.1, 3.1, -1.0], [2.1, 1.1, 1.0], [1.1, 4.1, -4.0]])
    labels = np.array([0, 0, 3, 0])
    t, w, atoms = depth_targets(pos, labels, 2.8, (30, 30), 0.2, 0.5, 3.0)
    # highest atom: the H at z = 1 → depths 2.8 + 1 − z
    assert sorted(atoms[:, 2].round(3)) == [3.8, 4.8]
    assert t[5, 10] == pytest.approx(3.8) and w[5, 10] == pytest.approx(1.0)  # pixel centre (5.5, 10.5) · 0.2
    assert t[15, 20] == pytest.approx(4.8) and w[15, 20] == pytest.approx(1.0)
    assert w[20, 5] < 1e-3  # the atom 5 Å down gets no target


def test_a_depth_network_saves_loads_and_refuses_other_files(tmp_path):
    net = DepthNet(SMALL).eval()
    x = normalize_stack(_stack(np.random.default_rng(0), px=37))  # not a multiple of 2**levels
    d = depth_map(x, net)
    assert d.shape == (37, 37) and np.allclose(d, SMALL.offset)  # untrained: the offset everywhere
    path = save_depth(tmp_path / "d.pt", net)
    assert isinstance(load_depth(path), DepthNet)
    model = save_checkpoint(tmp_path / "m.pt", StructureUNet(UNetConfig(base_channels=4)),
                            ModelInfo(config=UNetConfig(base_channels=4)))
    with pytest.raises(CheckpointError, match="m.pt"):
        load_depth(model)
    with pytest.raises(ValueError, match="heights"):
        depth_map(x[:4], net)


def test_molecules_move_rigidly_to_their_depth_and_loose_h_follow_their_nearest_o():
    # two waters (mol 0 and 1) and a loose H near O 1; depth map: 3 Å on the left half, 4 Å on the right
    pos = np.array([[1.0, 1.0, 0.0], [1.8, 1.0, 0.5], [0.2, 1.0, 0.5],
                    [6.0, 1.0, 0.0], [6.8, 1.0, -0.5], [5.2, 1.0, 0.5], [6.0, 1.9, 0.3]])
    atoms = Atoms("OHHOHHH", positions=pos)
    atoms.new_array("label", np.array(["O", "H_up", "H_up", "O", "H_down", "H_up", "H_flat"]))
    atoms.new_array("mol", np.array([0, 0, 0, 1, 1, 1, -1]))
    depth = np.full((20, 40), 3.0)
    depth[:, 20:] = 4.0
    place_at_depth(atoms, depth, (0.2, 0.2), (0.1, 0.1))
    z = atoms.get_positions()[:, 2]
    assert np.allclose(z, [0.0, 0.5, 0.5, -1.0, -1.5, -0.5, -0.7])
    assert atoms.info["closest_probe"] == pytest.approx(3.0)


def test_training_lowers_the_depth_error_on_stacks_it_never_saw(tmp_path):
    pool = StructurePool.load(pool_path("ice"))
    settings = SimulationSettings(n_pixels=32, closest_distance=(2.4, 3.4))  # 25 Å: 0.78 Å pixels
    drive(make_dataset(tmp_path / "ds", 12, "ice", pool.subset(range(0, 240, 20)), settings, seed=1,
                       shard_size=6), show=False)
    torch.manual_seed(0)
    cfg = DepthConfig(max_steps=120, batch_size=8, crop=32, report_every=30, val_size=4, lr=3e-3)
    records = []
    out = drive(train_depth([tmp_path / "ds"], tmp_path / "d.pt", cfg, DepthInfo(base_channels=8, levels=2,
                                                                                  pixel_size=25 / 32)),
                show=False, on_record=records.append)
    assert out.is_file() and [r.step for r in records] == [30, 60, 90, 120]
    assert records[-1].val < 0.7 * records[0].val  # on the held-back stack, noised once
    net = load_depth(out)
    assert net.info.provenance["steps"] == 120 and net.info.provenance["stacks"] == 12
    with pytest.raises(ValueError, match="pixels"):
        drive(train_depth([tmp_path / "ds"], tmp_path / "e.pt", cfg, DepthInfo(base_channels=4, levels=2)),
              show=False)


def test_predict_places_molecules_at_depth_unless_asked_not_to(tmp_path):
    stack = AFMStack(_stack(np.random.default_rng(0)), (0.2, 0.2), np.arange(10) * 0.1)
    cfg = UNetConfig(base_channels=4)
    torch.manual_seed(0)
    net, info = StructureUNet(cfg).eval(), ModelInfo(config=cfg, pixel_size=0.2)
    dnet = DepthNet(SMALL)
    torch.nn.init.normal_(dnet.net.head.weight, std=0.5)  # depths that vary across the scan
    flat = drive(iter_predict_maps(stack, (net, info), depth=False), show=False).atoms(0.05)
    assert len(flat) and np.allclose(flat.get_positions()[np.asarray(flat.arrays["label"]) == "O", 2], 0.0)
    pred = drive(iter_predict_maps(stack, (net, info), depth=dnet), show=False)
    deep = pred.atoms(0.05)
    zo = deep.get_positions()[np.asarray(deep.arrays["label"]) == "O", 2]
    assert zo.max() == pytest.approx(0.0) and zo.min() < -0.01 and "closest_probe" in deep.info
    # the same places in the plane
    assert np.allclose(deep.get_positions()[:, :2], flat.get_positions()[:, :2])
    # the card can turn it off; a network for another grid is refused when asked for, skipped when implicit
    info.provenance["depth"] = False
    assert resolve_depth(None, info) is None
    other = save_depth(tmp_path / "other.pt", DepthNet(DepthInfo(base_channels=4, levels=2)))
    with pytest.raises(ValueError, match="Å/px"):
        resolve_depth(other, info)
    info.provenance["depth"] = str(other)
    assert resolve_depth(None, info) is None


def test_cli_predict_writes_depths_and_no_depth_keeps_z_zero(tmp_path, capsys):
    from hydrafm._sample_data import sample_path
    from hydrafm.models.depth import shipped_depth_path

    if not shipped_depth_path().is_file():
        pytest.skip("no shipped depth network in this checkout")
    assert main(["predict", str(sample_path()), "-o", str(tmp_path / "a.xyz")]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["predict", str(sample_path()), "-o", str(tmp_path / "b.xyz"), "--no-depth"]) == 0
    assert "closest_probe" not in json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    a, b = read_xyz(tmp_path / "a.xyz"), read_xyz(tmp_path / "b.xyz")
    za = a.get_positions()[np.asarray(a.arrays["label"]) == "O", 2]
    zb = b.get_positions()[np.asarray(b.arrays["label"]) == "O", 2]
    assert np.allclose(zb, 0.0) and za.max() == pytest.approx(0.0, abs=1e-3) and za.min() < -0.3
    assert a.info["closest_probe"] == pytest.approx(line["closest_probe"])
    assert 2.0 < line["closest_probe"] < 4.5  # printed too: Å above the shallowest O


def test_cli_train_depth_refuses_to_overwrite(tmp_path, capsys):
    (tmp_path / "d.pt").write_bytes(b"keep me")
    assert main(["train-depth", str(tmp_path), "-o", str(tmp_path / "d.pt"), "--max-steps", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "d.pt").read_bytes() == b"keep me"
