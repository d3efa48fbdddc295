"""The cell-grid head: targets read from label maps, maps drawn from cells, training, Predict."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from hydrafm.models.cells import cell_loss, cell_targets, render_cells
from hydrafm.models.checkpoint import ModelInfo, load_checkpoint
from hydrafm.models.unet import StructureUNet, UNetConfig
from hydrafm.predict.atoms import maps_to_atoms
from hydrafm.predict.predictor import iter_predict_maps
from hydrafm.progress import drive
from hydrafm.simulate.labels import label_maps
from hydrafm.stack import AFMStack
from hydrafm.training.onthefly import OnTheFlyConfig, train_on_the_fly

PX = 25 / 128


def _atoms(n: int, size: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pos: list[np.ndarray] = []
    while len(pos) < n:
        p = np.append(rng.uniform(0.5, size - 0.5, 2), 0.0)
        if all(np.hypot(*(p[:2] - q[:2])) > 1.8 for q in pos):
            pos.append(p)
    return np.array(pos), rng.integers(0, 6, n)


def _perfect_output(present: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """The head output that says exactly ``present`` / ``offset``."""
    o = offset.clamp(1e-4, 1 - 1e-4)
    logit = torch.where(present > 0, torch.tensor(9.0), torch.tensor(-9.0))
    return torch.cat([logit, torch.logit(o[:, 0]), torch.logit(o[:, 1])], 1)


def test_targets_find_every_atom_and_the_maps_drawn_from_them_are_the_label_maps():
    pos, lab = _atoms(25, 64 * PX)
    maps = torch.from_numpy(label_maps(pos, lab, (64, 64), PX))[None]
    present, offset = cell_targets(maps, 4)
    assert present.shape == (1, 6, 16, 16) and offset.shape == (1, 2, 6, 16, 16)
    assert int(present.sum()) == len(pos)
    # each atom's cell and sub-cell place: the cell grid reproduces the atom to 0.01 Å
    b, li, cy, cx = present.nonzero(as_tuple=True)
    rows = (cy + offset[b, 0, li, cy, cx]) * 4 - 0.5
    cols = (cx + offset[b, 1, li, cy, cx]) * 4 - 0.5
    found = np.column_stack([cols.numpy(), rows.numpy()]) * PX
    d, j = cKDTree(pos[:, :2]).query(found)
    assert d.max() < 0.01 and np.array_equal(lab[j], li.numpy())
    drawn = render_cells(_perfect_output(present, offset), 4, 0.35 / PX)
    assert drawn.shape == maps.shape
    assert float((drawn - maps).abs().max()) < 0.01
    # the loss is smallest at the truth and grows when an atom is moved or missing
    good = float(cell_loss(_perfect_output(present, offset), maps, 4))
    moved = offset.clone()
    moved[0, 0, li[0], cy[0], cx[0]] = (moved[0, 0, li[0], cy[0], cx[0]] + 0.5) % 1
    missing = present.clone()
    missing[0, li[1], cy[1], cx[1]] = 0
    assert good < 0.01
    assert float(cell_loss(_perfect_output(present, moved), maps, 4)) > good + 0.005
    assert float(cell_loss(_perfect_output(missing, offset), maps, 4)) > good + 0.005


def test_no_atom_no_target_and_bad_cells_are_refused():
    present, _ = cell_targets(torch.zeros(2, 6, 32, 32), 4)
    assert present.sum() == 0
    with pytest.raises(ValueError, match="cells of 4 px"):
        cell_targets(torch.zeros(1, 6, 30, 32), 4)
    with pytest.raises(ValueError, match="power of 2"):
        StructureUNet(UNetConfig(head="cells", cell=3))
    with pytest.raises(ValueError, match="power of 2"):
        StructureUNet(UNetConfig(head="cells", cell=16, levels=3))
    with pytest.raises(ValueError, match="unknown head"):
        StructureUNet(UNetConfig(head="boxes"))


@pytest.mark.parametrize("encoder", ["2d", "3d"])
def test_the_cell_head_ends_on_the_grid_and_predict_reads_its_maps(encoder):
    net = StructureUNet(UNetConfig(base_channels=4, encoder=encoder, head="cells", cell=4)).eval()
    x = torch.randn(2, 1, 10, 32, 32)
    with torch.no_grad():
        assert net(x).shape == (2, 18, 8, 8)
        probs = net.probabilities(x)
    assert probs.shape == (2, 6, 32, 32) and 0 <= float(probs.min()) and float(probs.max()) <= 1
    dense = StructureUNet(UNetConfig(base_channels=4, encoder=encoder)).eval()
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in dense.parameters())
    with torch.no_grad():
        assert torch.allclose(dense.probabilities(x), torch.sigmoid(dense(x)))
    # Predict takes either head: a tiled prediction of a 40 px stack (tiles of 32 px)
    stack = AFMStack(np.random.default_rng(0).normal(size=(10, 40, 40)).astype(np.float32), (PX, PX),
                     heights=np.arange(10) * 0.1)
    info = ModelInfo(config=net.config, pixel_size=PX, dz=0.1)
    pred = drive(iter_predict_maps(stack, (net, info), flips=True, tile=32, overlap=8), show=False)
    assert pred.maps.shape == (6, 40, 40) and np.isfinite(pred.maps).all()


def test_a_cell_head_trains_on_the_fly_and_round_trips(tmp_path):
    cfg = OnTheFlyConfig(pools=("water",), batch_size=2, crop=16, steps_per_epoch=2, epochs=2, val_size=4,
                         layer_depth=3.0)
    out = tmp_path / "cells.pt"
    recs = []
    drive(train_on_the_fly(out, cfg, UNetConfig(base_channels=4, encoder="2d", head="cells", cell=4),
                           device="cpu", cache=tmp_path / "cache"), show=False, on_record=recs.append)
    assert [r.epoch for r in recs] == [1, 2] and all(np.isfinite(r.val_loss) for r in recs)
    model, info, _ = load_checkpoint(out)
    assert info.config.head == "cells" and info.config.cell == 4
    assert model(torch.zeros(1, 1, 10, 16, 16)).shape == (1, 18, 4, 4)
    # resumed, it continues the same run
    recs = []
    drive(train_on_the_fly(out, replace(cfg, epochs=3), UNetConfig(base_channels=4, encoder="2d", head="cells"),
                           device="cpu", cache=tmp_path / "cache"), show=False, on_record=recs.append)
    assert [r.epoch for r in recs] == [3]


def test_peaks_of_a_drawn_map_are_the_cells_atoms():
    pos, lab = _atoms(20, 64 * PX, seed=3)
    maps = torch.from_numpy(label_maps(pos, lab, (64, 64), PX))[None]
    drawn = render_cells(_perfect_output(*cell_targets(maps, 4)), 4, 0.35 / PX)[0].numpy()
    atoms = maps_to_atoms(drawn, PX, threshold=0.5)
    d, _ = cKDTree(pos[:, :2]).query(atoms.positions[:, :2])
    assert len(atoms) == len(pos) and d.max() < 0.15


def test_a_cell_head_starts_from_a_maps_checkpoint_encoder(tmp_path):
    from hydrafm.models.checkpoint import save_checkpoint

    dense = StructureUNet(UNetConfig(base_channels=4, encoder="2d"))
    base = tmp_path / "dense.pt"
    save_checkpoint(base, dense, ModelInfo(config=dense.config, pixel_size=PX, dz=0.1))
    cfg = OnTheFlyConfig(pools=("water",), batch_size=2, crop=16, steps_per_epoch=1, epochs=1, val_size=4,
                         layer_depth=3.0, lr=1e-12)
    out = tmp_path / "cells.pt"
    drive(train_on_the_fly(out, cfg, UNetConfig(), device="cpu", init_from=base, head="cells", cell=4,
                           cache=tmp_path / "cache"), show=False)
    model, info, _ = load_checkpoint(out)
    assert info.config.head == "cells" and info.config.base_channels == 4 and info.config.encoder == "2d"
    assert info.provenance["initialised_from"] == str(base)
    # the encoder and the decoder levels both heads have start from the checkpoint (lr ~0: unchanged)
    for name in ("enc.0.0.weight", "bottom.0.weight", "dec.0.0.weight"):
        assert torch.allclose(model.state_dict()[name], dense.state_dict()[name], atol=1e-6)
    assert model.head.weight.shape[0] == 18
