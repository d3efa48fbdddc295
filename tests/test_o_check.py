"""The O check and Predict's check of O peaks against it."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from ase import Atoms

from hydrafm.models.checkpoint import CheckpointError
from hydrafm.models.o_check import (
    CELLS,
    GRID,
    OCheckInfo,
    OCheckNet,
    cell_targets,
    decode_cells,
    load_o_check,
    o_crops,
    o_verdicts,
    save_o_check,
    shipped_o_check_path,
)
from hydrafm.predict.o_check import check_o_peaks
from hydrafm.predict.predictor import Prediction, resolve_model

LABELS = ["O", "Na", "K", "H_up", "H_flat", "H_down"]


def _blob(x, y, size=100, px=0.2, width=0.05):
    yy, xx = np.mgrid[0:size, 0:size] * px + px / 2
    return np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / width).astype(np.float32)


def test_crops_are_centred_on_the_peak_with_the_maps_as_the_last_channels():
    frames = np.stack([_blob(7.1, 5.1) * (1 + 0.1 * k) for k in range(10)])  # on a pixel centre
    maps = np.zeros((6, 100, 100), np.float32)
    maps[0] = _blob(7.1, 5.1)
    maps[4] = _blob(8.1, 5.1)  # a level H 1 Å in +x
    c = o_crops(frames, maps, LABELS, (0.2, 0.2), (0.1, 0.1), np.array([[7.1, 5.1]]))[0]
    assert c.shape == (12, len(GRID), len(GRID))
    mid = len(GRID) // 2
    assert np.unravel_index(np.argmax(c[0]), c[0].shape) == (mid, mid)
    assert c[-2, mid, mid] == pytest.approx(1.0, abs=1e-3)
    r, k = np.unravel_index(np.argmax(c[-1]), c[-1].shape)  # rows are y, columns x
    assert r == mid and GRID[k] == pytest.approx(1.0, abs=1e-6)
    assert abs(float(c[:-2].mean())) < 1e-4  # the frames z-scored over the crop


def test_the_check_round_trips_and_names_a_bad_file(tmp_path):
    torch.manual_seed(0)
    net = OCheckNet(OCheckInfo(width=4)).eval()
    x = torch.randn(2, 12, len(GRID), len(GRID))
    again = load_o_check(save_o_check(tmp_path / "o.pt", net))
    with torch.no_grad():
        assert torch.allclose(again(x), net(x))
    with pytest.raises(CheckpointError, match="not-a-model.pt"):
        (tmp_path / "not-a-model.pt").write_bytes(b"nonsense")
        load_o_check(tmp_path / "not-a-model.pt")
    with pytest.raises(ValueError, match="heights"):
        o_verdicts(net, np.zeros((4, 8, 8), np.float32), np.zeros((6, 8, 8), np.float32), LABELS, (0.2, 0.2),
                   (0.1, 0.1), [[1, 1]])


def test_the_cells_head_reads_back_where_the_o_is_and_when_there_is_none(tmp_path):
    torch.manual_seed(1)
    offset = (torch.rand(50, 2) - 0.5) * 6.0  # Å, within the 6.4 Å crop
    cell, within = cell_targets(offset)
    logits = torch.zeros(50, CELLS * CELLS + 1)
    logits[torch.arange(50), cell] = 20.0
    place = torch.zeros(50, 2, CELLS, CELLS)
    place[torch.arange(50), :, cell // CELLS, cell % CELLS] = within
    p, back = decode_cells(logits, place)
    assert torch.allclose(back, offset, atol=1e-4) and bool((p > 0.99).all())
    logits[:, -1] = 40.0  # "no O" the likeliest
    assert bool((decode_cells(logits, place)[0] < 0.01).all())
    net = OCheckNet(OCheckInfo(width=4, head="cells")).eval()
    x = torch.randn(3, 12, len(GRID), len(GRID))
    again = load_o_check(save_o_check(tmp_path / "cells.pt", net))
    with torch.no_grad():
        p, off = again.verdicts(x)
        assert torch.allclose(off, net.verdicts(x)[1]) and p.shape == (3,) and off.shape == (3, 2)
    with pytest.raises(ValueError, match="head"):
        OCheckNet(OCheckInfo(head="grid"))


class _Says(OCheckNet):
    """A check whose verdict depends only on where the peak is: left of x = 9 Å no O; the others move by ``shift``."""

    def __init__(self, shift=(0.0, 0.0)) -> None:
        super().__init__(OCheckInfo(width=2, tau=0.5))
        self.shift = shift

    def forward(self, x):
        # the frames are a ramp in x (_ramp): their z-scored crop is negative at the centre left of 9 Å
        centre = x[:, 0, len(GRID) // 2, len(GRID) // 2]
        out = torch.zeros(len(x), 3)
        out[:, 0] = torch.where(centre < 0, -5.0, 5.0)
        out[:, 1], out[:, 2] = self.shift
        return out


def _peaks(*extra):
    rows = [("O", 6.0, 10.0), ("O", 12.0, 10.0), ("H_flat", 12.95, 10.0), *extra]
    atoms = Atoms(["O" if r[0] == "O" else "H" for r in rows], positions=[(x, y, 0.0) for _, x, y in rows])
    atoms.new_array("label", np.array([r[0] for r in rows], dtype="<U6"))
    atoms.new_array("confidence", np.ones(len(rows)))
    return atoms


def _ramp():
    """Frames whose crops are negative at the centre left of x = 9 Å and positive right of it."""
    xx = np.mgrid[0:100, 0:100][1] * 0.2 + 0.1
    return np.repeat(np.tanh(xx - 9.0)[None].astype(np.float32), 10, axis=0)


def test_unlikely_o_are_dropped_and_the_rest_moved():
    maps = np.zeros((6, 100, 100), np.float32)
    kept, counts = check_o_peaks(_peaks(), _ramp(), maps, LABELS, (0.2, 0.2), (0.1, 0.1), _Says((0.4, -0.3)))
    assert counts == {"checked": 2, "dropped": 1, "moved": 1}
    assert list(kept.arrays["label"]) == ["O", "H_flat"]
    assert np.allclose(kept.positions[0, :2], [12.4, 9.7])  # moved by the check's offset
    assert np.allclose(kept.positions[1, :2], [12.95, 10.0])  # H peaks are left to the assembly
    # two O that the check puts on the same spot are one O: the second goes
    twice, counts = check_o_peaks(_peaks(("O", 12.6, 10.0)), _ramp(), maps, LABELS, (0.2, 0.2), (0.1, 0.1),
                                  _Says())
    assert counts["dropped"] == 2 and list(twice.arrays["label"]).count("O") == 1
    # a check that only drops leaves the kept O where they were, and two O on one spot both
    still, counts = check_o_peaks(_peaks(("O", 12.6, 10.0)), _ramp(), maps, LABELS, (0.2, 0.2), (0.1, 0.1),
                                  _Says((0.4, -0.3)), move=False)
    assert counts == {"checked": 3, "dropped": 1, "moved": 0}
    assert np.allclose(still.positions[still.arrays["label"] == "O", :2], [[12.0, 10.0], [12.6, 10.0]])


def test_a_nudge_shorter_than_min_move_leaves_the_o_where_it_is():
    maps = np.zeros((6, 100, 100), np.float32)
    near = _Says((0.15, -0.1))  # 0.18 Å: a nudge
    kept, counts = check_o_peaks(_peaks(), _ramp(), maps, LABELS, (0.2, 0.2), (0.1, 0.1), near, min_move=0.2)
    assert counts["moved"] == 0 and np.allclose(kept.positions[0, :2], [12.0, 10.0])
    near.info.min_move = 0.2  # the check's own setting is used when none is given
    assert np.allclose(check_o_peaks(_peaks(), _ramp(), maps, LABELS, (0.2, 0.2), (0.1, 0.1), near)[0]
                       .positions[0, :2], [12.0, 10.0])
    far = _Says((0.4, -0.3))  # 0.5 Å: moved, whatever min_move below it
    far.info.min_move = 0.2
    kept, counts = check_o_peaks(_peaks(), _ramp(), maps, LABELS, (0.2, 0.2), (0.1, 0.1), far)
    assert counts["moved"] == 1 and np.allclose(kept.positions[0, :2], [12.4, 9.7])
    # an older check file without the setting loads with min_move 0: every kept O moves
    assert OCheckInfo(**{k: v for k, v in OCheckInfo().to_dict().items() if k != "min_move"}).min_move == 0.0


def test_a_check_file_is_loaded_onto_the_device_the_structure_network_ran_on(tmp_path):
    from hydrafm.models.bond_ends import BondEndInfo, BondEndNet, save_bond_ends
    from hydrafm.predict.predictor import resolve_bond_ends, resolve_o_check

    _, info = resolve_model("water")
    o_file = save_o_check(tmp_path / "check.pt", OCheckNet(OCheckInfo(head="cells")))
    ends_file = save_bond_ends(tmp_path / "ends.pt", BondEndNet(BondEndInfo()))
    for device in ("meta", "cpu"):  # "meta": a device other than the CPU that needs no hardware
        o_net = resolve_o_check(str(o_file), info, views=8, device=device)
        ends = resolve_bond_ends(str(ends_file), info, device)
        assert {p.device.type for net in (o_net, ends) for p in net.parameters()} == {device}
        assert o_net.info.views == 8
    # a Prediction hands its device on: a check file asked for by path is loaded there
    maps = np.zeros((len(info.labels), 100, 100), np.float32)
    maps[0] = _blob(6.0, 10.0)
    on_meta = Prediction(maps, (0.2, 0.2), (0.1, 0.1), info, "water", frames=_ramp(), device="meta")
    with pytest.raises((NotImplementedError, RuntimeError)):  # a check on "meta" has no numbers to give back
        on_meta.atoms(0.5, o_check=str(o_file))
    on_cpu = Prediction(maps, (0.2, 0.2), (0.1, 0.1), info, "water", frames=_ramp())
    assert on_cpu.device == "cpu" and on_cpu.atoms(0.5, o_check=str(o_file)).info["o_check"].endswith("of 1")


def test_predict_checks_the_o_only_when_asked_and_says_what_it_did():
    _, info = resolve_model("water")
    maps = np.zeros((len(info.labels), 100, 100), np.float32)
    for label, x, y in (("O", 6.0, 10.0), ("O", 12.0, 10.0), ("H_flat", 12.95, 10.0), ("H_up", 12.0, 10.3)):
        k = list(info.labels).index(label)
        maps[k] = np.maximum(maps[k], _blob(x, y))
    p = Prediction(maps, (0.2, 0.2), (0.1, 0.1), info, "water", frames=_ramp())
    plain = p.atoms(0.5, o_check=False)
    assert "o_check" not in plain.info and list(plain.arrays["label"]).count("O") == 2
    checked = p.atoms(0.5, o_check=_Says())
    assert checked.info["o_check"] == "0 moved, 1 dropped of 2"
    assert list(checked.arrays["label"]).count("O") == 1
    made_for_water = _Says()
    made_for_water.info.provenance["model"] = "water"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # its own model's peaks: no warning
        p.atoms(0.5, o_check=made_for_water)
    _, hydrate_info = resolve_model("na-hydrate")
    other = Prediction(np.zeros((len(hydrate_info.labels), 100, 100), np.float32), (0.2, 0.2), (0.1, 0.1),
                       hydrate_info, "na-hydrate", frames=_ramp())
    with pytest.warns(UserWarning, match="'water' model's peaks, not 'na-hydrate'"):
        other.atoms(0.5, o_check=made_for_water)
    bare = Prediction(maps, (0.2, 0.2), (0.1, 0.1), info, "water")  # no frames kept: nothing to check against
    assert "o_check" not in bare.atoms(0.5).info
    with pytest.raises(ValueError, match="O check needs the stack's frames"):
        bare.atoms(0.5, o_check=_Says())


@pytest.mark.skipif(not shipped_o_check_path().is_file(), reason="no shipped O check")
def test_the_shipped_check_finds_the_o_of_held_out_bilayer_windows():
    from hydrafm.paths import pool_path
    from hydrafm.predict.metrics import Scores, score_atoms
    from hydrafm.predict.predictor import predict_atoms
    from hydrafm.simulate.engine import TorchSimulator
    from hydrafm.simulate.labels import atom_labels
    from hydrafm.simulate.settings import SampledTip, SimulationSettings
    from hydrafm.structures.ice import held_out_mask
    from hydrafm.structures.pool import StructurePool

    pool = StructurePool.load(pool_path("ice"))
    family = np.asarray(pool.info["family"]).astype(str)
    plain, checked = Scores(), Scores()
    for pick in np.flatnonzero(held_out_mask(pool) & (family == "bilayer-Pt111"))[:2]:
        pos, numbers = pool.arrays(int(pick))
        stack = TorchSimulator(SimulationSettings()).simulate(pos, numbers, SampledTip(2.7))
        labels = atom_labels(pos, numbers)
        for scores, check in ((plain, False), (checked, True)):
            atoms = predict_atoms(stack, "water", o_check=check)
            scores.add(score_atoms(atoms.positions[:, :2], atoms.arrays["label"], pos, labels, top=1.5))
    # the structure network alone misplaces or invents a few O of the lower half (0.91 here)
    assert checked.summary()["O"]["f1"] > plain.summary()["O"]["f1"] + 0.02


@pytest.mark.skipif(not shipped_o_check_path().is_file(), reason="no shipped O check")
def test_cli_predict_checks_the_o_as_the_card_says_unless_told(tmp_path):
    from hydrafm._sample_data import sample_path
    from hydrafm.cli import main
    from hydrafm.io.xyz import read_xyz
    from hydrafm.predict.predictor import default_o_check

    _, info = resolve_model("water")
    assert default_o_check(info) is True  # water's card asks for the check (since session 45)
    assert main(["predict", str(sample_path()), "-o", str(tmp_path / "a.xyz")]) == 0
    assert main(["predict", str(sample_path()), "-o", str(tmp_path / "b.xyz"), "--no-o-check"]) == 0
    checked, plain = read_xyz(tmp_path / "a.xyz"), read_xyz(tmp_path / "b.xyz")
    assert "of" in str(checked.info.get("o_check", "")) and "o_check" not in plain.info
    assert "views" not in str(checked.info["o_check"])
    # eight views on request; the .xyz says so
    assert main(["predict", str(sample_path()), "-o", str(tmp_path / "c.xyz"), "--o-check-views", "8"]) == 0
    assert str(read_xyz(tmp_path / "c.xyz").info["o_check"]).endswith("(8 views)")
    with pytest.raises(SystemExit, match="needs the O check"):
        main(["predict", str(sample_path()), "-o", str(tmp_path / "d.xyz"), "--no-o-check", "--o-check-views", "8"])
    _, hydrate_info = resolve_model("na-hydrate")
    assert default_o_check(hydrate_info) is False  # the check learnt from water's peaks, not the hydrates'


def test_a_view_read_offset_turns_back_to_the_crops_frame():
    from hydrafm.models.o_check import _offset_back, turn_crops

    off = torch.tensor([[0.7, -0.2], [-1.1, 0.4]])
    x = torch.zeros(2, 12, len(GRID), len(GRID))
    c = len(GRID) // 2
    for i, (dx, dy) in enumerate(off.tolist()):  # a bright spot where each offset points
        x[i, 0, c + round(dy / 0.2), c + round(dx / 0.2)] = 1.0
    for k in range(4):
        for mirror in (False, True):
            xt, ot = turn_crops(x, off, k, mirror)
            for i in range(2):  # the spot moved with the offset
                row, col = divmod(int(xt[i, 0].argmax()), len(GRID))
                assert np.allclose([(col - c) * 0.2, (row - c) * 0.2], ot[i].numpy(), atol=0.11)
            assert torch.allclose(_offset_back(ot, k, mirror), off, atol=1e-6)


def test_views_average_the_check_and_need_a_known_count():
    maps = np.zeros((6, 100, 100), np.float32)
    one = _Says((0.4, 0.0))
    p1, o1 = o_verdicts(one, _ramp(), maps, LABELS, (0.2, 0.2), (0.1, 0.1), np.array([[12.0, 10.0]]))
    assert np.allclose(o1, [[0.4, 0.0]])
    one.info.views = 4  # a check that ignores the crop's turn reads the same offset in every view:
    p4, o4 = o_verdicts(one, _ramp(), maps, LABELS, (0.2, 0.2), (0.1, 0.1), np.array([[12.0, 10.0]]))
    # turned back, the four views disagree (0.4 Å each way in x): the medoid's side wins, not a blur to 0
    assert np.isclose(p4[0], p1[0]) and np.isclose(abs(o4[0, 0]), 0.4) and np.isclose(o4[0, 1], 0.0)
    eight = one.with_views(8)  # a twin sharing the weights; the original keeps its own views
    assert eight.info.views == 8 and one.info.views == 4 and next(eight.parameters()) is next(one.parameters())
    with pytest.raises(ValueError, match="1, 4 or 8 views"):
        one.with_views(2)
    one.info.views = 3
    with pytest.raises(ValueError, match="1, 4 or 8 views"):
        o_verdicts(one, _ramp(), maps, LABELS, (0.2, 0.2), (0.1, 0.1), np.array([[12.0, 10.0]]))
