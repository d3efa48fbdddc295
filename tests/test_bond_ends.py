"""The bond-end classifier and Predict's check of level H peaks against it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms

from hydrafm.models.bond_ends import (
    ACROSS,
    ALONG,
    BondEndInfo,
    BondEndNet,
    bond_crops,
    donor_probability,
    level_h_bonds,
    load_bond_ends,
    save_bond_ends,
    shipped_bond_ends_path,
)
from hydrafm.models.checkpoint import CheckpointError
from hydrafm.predict.bond_ends import put_level_h_on_donor_ends
from hydrafm.predict.predictor import Prediction, resolve_model


def _frames(spot_xy, n=10, size=64, px=0.2):
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) * px
    blob = np.exp(-((xx - spot_xy[0]) ** 2 + (yy - spot_xy[1]) ** 2) / 0.3)
    return np.stack([blob * (1 + 0.1 * k) for k in range(n)]).astype(np.float32)


def test_crops_are_aligned_with_the_bond_and_the_ends_mirror():
    first, second = np.array([5.0, 6.0]), np.array([7.2, 7.6])
    frames = _frames(first + 0.97 * (second - first) / np.linalg.norm(second - first))
    a = bond_crops(frames, (0.2, 0.2), (0.1, 0.1), first[None], second[None])[0]
    assert a.shape == (10, len(ALONG), len(ACROSS))
    i, j = np.unravel_index(np.argmax(a[0]), a[0].shape)
    assert ALONG[i] < 0 and abs(ACROSS[j]) < 0.25  # the H near the first O, on the bond
    b = bond_crops(frames, (0.2, 0.2), (0.1, 0.1), second[None], first[None])[0]
    assert np.allclose(b, a[:, ::-1, ::-1], atol=1e-4)


def test_the_classifier_cannot_prefer_an_end_and_round_trips(tmp_path):
    torch.manual_seed(0)
    net = BondEndNet(BondEndInfo(width=4)).eval()
    x = torch.randn(3, 10, len(ALONG), len(ACROSS))
    with torch.no_grad():
        assert torch.allclose(net(x), -net(x.flip(-2)), atol=1e-6)
    path = save_bond_ends(tmp_path / "ends.pt", net)
    again = load_bond_ends(path)
    with torch.no_grad():
        assert torch.allclose(again(x), net(x))
    with pytest.raises(CheckpointError, match="not-a-model.pt"):
        (tmp_path / "not-a-model.pt").write_bytes(b"nonsense")
        load_bond_ends(tmp_path / "not-a-model.pt")
    with pytest.raises(ValueError, match="heights"):
        donor_probability(net, np.zeros((4, 8, 8), np.float32), (0.2, 0.2), (0.1, 0.1), [[1, 1]], [[3, 1]])


class _Says(BondEndNet):
    """A classifier that gives every first O the same log-odds of donating."""

    def __init__(self, logit: float) -> None:
        super().__init__(BondEndInfo(width=2, tau=0.3))
        self.logit = logit

    def forward(self, x):
        return torch.full((len(x),), self.logit)


def _peaks(*extra):
    rows = [("O", 10.0, 10.0), ("O", 12.8, 10.0), ("H_flat", 10.95, 10.05), ("H_up", 12.8, 10.3), *extra]
    atoms = Atoms(["O" if r[0] == "O" else "H" for r in rows], positions=[(x, y, 0.0) for _, x, y in rows])
    atoms.new_array("label", np.array([r[0] for r in rows], dtype="<U6"))
    atoms.new_array("confidence", np.ones(len(rows)))
    return atoms


def test_a_level_h_peak_goes_to_the_end_the_classifier_gives_the_bond_to():
    frames = np.zeros((10, 100, 100), np.float32)
    kept, counts = put_level_h_on_donor_ends(_peaks(), frames, (0.2, 0.2), (0.1, 0.1), _Says(3.0))
    assert counts == {"checked": 1, "moved": 0, "dropped": 0}
    assert np.allclose(kept.positions, _peaks().positions)
    moved, counts = put_level_h_on_donor_ends(_peaks(), frames, (0.2, 0.2), (0.1, 0.1), _Says(-3.0))
    assert counts == {"checked": 1, "moved": 1, "dropped": 0}
    assert np.allclose(moved.positions[2, :2], [11.85, 9.95])  # reflected through the bond's midpoint
    assert np.allclose(moved.positions[[0, 1, 3]], _peaks().positions[[0, 1, 3]])  # the rest untouched
    # the network marked both ends: the checked one goes, the other stays
    both, counts = put_level_h_on_donor_ends(_peaks(("H_flat", 11.8, 9.9)), frames, (0.2, 0.2), (0.1, 0.1),
                                             _Says(-3.0))
    assert counts["dropped"] == 1 and len(both) == 4
    assert list(both.arrays["label"]).count("H_flat") == 1


def test_predict_checks_the_bond_ends_only_when_asked_and_says_what_it_did():
    _, info = resolve_model("water")
    maps = np.zeros((len(info.labels), 100, 100), np.float32)
    yy, xx = (np.mgrid[0:100, 0:100]) * 0.2 + 0.1
    for label, x, y in (("O", 10.0, 10.0), ("O", 12.8, 10.0), ("H_flat", 10.95, 10.0), ("H_up", 12.8, 10.3)):
        k = list(info.labels).index(label)
        maps[k] = np.maximum(maps[k], np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 0.05))
    frames = np.zeros((10, 100, 100), np.float32)
    p = Prediction(maps, (0.2, 0.2), (0.1, 0.1), info, "water", frames=frames)
    plain = p.atoms(0.5, bond_ends=False, o_check=False)  # the O check (water's card) left out of this test
    assert "bond_ends" not in plain.info
    checked = p.atoms(0.5, bond_ends=_Says(-3.0), o_check=False)
    assert checked.info["bond_ends"] == "1 moved, 0 dropped of 1"
    # the O at 12.8 now owns the level H (it sits 0.95 Å from it)
    o_right = int(np.flatnonzero((checked.arrays["label"] == "O") & (checked.positions[:, 0] > 12))[0])
    mol = checked.arrays["mol"]
    hs = np.flatnonzero((mol == mol[o_right]) & (checked.arrays["label"] == "H_flat"))
    assert len(hs) >= 1 and np.min(np.abs(checked.positions[hs, 0] - 11.85)) < 0.2
    bare = Prediction(maps, (0.2, 0.2), (0.1, 0.1), info, "water")  # no frames kept: nothing to check against
    assert "bond_ends" not in bare.atoms(0.5).info
    with pytest.raises(ValueError, match="frames"):
        bare.atoms(0.5, bond_ends=_Says(-3.0))


@pytest.mark.skipif(not shipped_bond_ends_path().is_file(), reason="no shipped bond-end classifier")
def test_the_shipped_classifier_reads_the_donor_ends_of_a_simulated_ice_layer():
    from hydrafm.paths import pool_path
    from hydrafm.simulate.engine import TorchSimulator
    from hydrafm.simulate.labels import atom_labels
    from hydrafm.simulate.settings import SampledTip, SimulationSettings
    from hydrafm.structures.ice import held_out_mask
    from hydrafm.structures.pool import StructurePool

    pool = StructurePool.load(pool_path("ice"))
    family = np.asarray(pool.info["family"]).astype(str)
    pick = np.flatnonzero(held_out_mask(pool) & (family == "bilayer-Pt111"))[0]
    pos, numbers = pool.arrays(int(pick))
    stack = TorchSimulator(SimulationSettings()).simulate(pos, numbers, SampledTip(2.7))
    labels = atom_labels(pos, numbers)
    bonds = level_h_bonds(pos, labels)
    assert len(bonds) >= 10
    donor, acceptor = (np.array(v) for v in zip(*bonds))
    px = stack.pixel_size
    p = donor_probability(load_bond_ends(), stack.data, px, (px[0] / 2, px[1] / 2), pos[donor, :2],
                          pos[acceptor, :2])
    assert np.mean(p > 0.5) >= 0.75  # the structure network alone: ~0.5


@pytest.mark.skipif(not shipped_bond_ends_path().is_file(), reason="no shipped bond-end classifier")
def test_cli_predict_checks_the_bond_ends_when_asked(tmp_path):
    from hydrafm.cli import main
    from hydrafm.io.xyz import read_xyz
    from hydrafm._sample_data import sample_path

    assert main(["predict", str(sample_path()), "-o", str(tmp_path / "a.xyz"), "--bond-ends"]) == 0
    assert main(["predict", str(sample_path()), "-o", str(tmp_path / "b.xyz")]) == 0
    checked, plain = read_xyz(tmp_path / "a.xyz"), read_xyz(tmp_path / "b.xyz")
    assert "of" in str(checked.info.get("bond_ends", "")) and "bond_ends" not in plain.info
    assert (checked.arrays["label"] == "O").sum() == (plain.arrays["label"] == "O").sum()
