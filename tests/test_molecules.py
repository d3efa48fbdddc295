"""Whole molecules from maps: water geometry, H from peaks / maps / H-bonds, ion shells, xyz, metric."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from scipy.spatial import cKDTree

from hydrafm.io.xyz import LABELS, atoms_to_points, points_to_atoms, read_xyz, write_xyz
from hydrafm.predict import molecules
from hydrafm.predict.atoms import maps_to_atoms
from hydrafm.predict.metrics import score_atoms
from hydrafm.predict.molecules import (ACCEPTOR, HOH_ANGLE, MAX_NEIGHBOURS, OH_LENGTH, assemble_molecules,
                                       drop_crowded, maps_to_molecules, molecule_confidence, molecule_members)
from hydrafm.simulate.labels import atom_labels, h_labels, label_maps

PX = 0.2


def _waters(mol: Atoms) -> list[np.ndarray]:
    """Atom indices of each water (O first) by ``mol``."""
    lab = mol.arrays["label"]
    return [np.flatnonzero(mol.arrays["mol"] == m) for m in np.unique(mol.arrays["mol"][lab == "O"])]


def check_geometry(mol: Atoms) -> None:
    """Every O has exactly two H at 0.96–1.0 Å and 100–110°, each H classed by its own bond."""
    lab = mol.arrays["label"]
    assert set(mol.arrays) >= {"label", "confidence", "mol", "shell"}
    assert np.all((mol.arrays["confidence"] >= 0) & (mol.arrays["confidence"] <= 1.0 + 1e-6))
    for idx in _waters(mol):
        assert len(idx) == 3 and lab[idx[0]] == "O"
        assert all(str(v).startswith("H_") for v in lab[idx[1:]])
        bonds = mol.positions[idx[1:]] - mol.positions[idx[0]]
        lengths = np.linalg.norm(bonds, axis=1)
        assert np.all((lengths >= 0.96) & (lengths <= 1.0))
        angle = np.degrees(np.arccos(bonds[0] @ bonds[1] / lengths.prod()))
        assert 100 <= angle <= 110
        assert list(lab[idx[1:]]) == list(h_labels(bonds))
    ions = np.isin(lab, ("Na", "K"))
    assert np.all(mol.arrays["shell"][ions] == mol.arrays["mol"][ions])


def random_water(rng: np.random.Generator, o: np.ndarray) -> np.ndarray:
    """O at ``o`` and two H of a rigid water in a random orientation, avoiding the ±30° class borders."""
    b = np.radians(HOH_ANGLE)
    h0 = OH_LENGTH * np.array([[1.0, 0, 0], [np.cos(b), np.sin(b), 0]])
    while True:
        q = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        h = h0 @ q.T
        elev = np.degrees(np.arcsin(h[:, 2] / OH_LENGTH))
        lateral_gap = np.hypot(*(h[0, :2] - h[1, :2]))
        if np.all(np.abs(np.abs(elev) - 30) > 8) and lateral_gap > 0.8:
            return np.vstack([o, o + h])


@pytest.mark.parametrize("seed", range(4))
def test_random_maps_give_whole_waters(seed):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    maps = np.stack([gaussian_filter(rng.random((96, 96)), 2.0) for _ in LABELS])
    maps = (maps - maps.min(axis=(1, 2), keepdims=True)) / np.ptp(maps, axis=(1, 2), keepdims=True)
    mol = maps_to_molecules(maps, PX, (1.0, -2.0), threshold=0.5)
    assert (mol.arrays["label"] == "O").sum() > 5
    check_geometry(mol)
    loose = maps_to_atoms(maps, PX, (1.0, -2.0), 0.5)
    whole = assemble_molecules(loose, maps, PX, (1.0, -2.0))
    assert (whole.arrays["label"] == "O").sum() == (loose.arrays["label"] == "O").sum()  # every O assembled
    o = mol.positions[mol.arrays["label"] == "O", :2]  # then only crowded O are dropped
    assert max(len(n) - 1 for n in cKDTree(o).query_ball_point(o, ACCEPTOR[1])) <= MAX_NEIGHBOURS
    assert len(o) >= 0.7 * (loose.arrays["label"] == "O").sum()


def _loose(xy: np.ndarray, conf: np.ndarray, ions: np.ndarray | None = None) -> Atoms:
    ions = np.zeros((0, 2)) if ions is None else ions
    pos = np.column_stack([np.vstack([xy, ions]), np.zeros(len(xy) + len(ions))])
    atoms = Atoms(symbols=["O"] * len(xy) + ["Na"] * len(ions), positions=pos)
    atoms.new_array("label", np.array(["O"] * len(xy) + ["Na"] * len(ions), dtype="<U6"))
    atoms.new_array("confidence", np.concatenate([conf, np.ones(len(ions))]))
    return atoms


def test_ring_centres_are_dropped_and_ring_o_kept():
    ring_o = honeycomb(a=2.6)
    steps = 2.6 * np.array([[np.cos(t), np.sin(t)] for t in np.radians(np.arange(0, 360, 60))])
    cand = np.unique(np.round((ring_o[:, None] + steps[None]).reshape(-1, 2), 3), axis=0)
    d = np.hypot(*(cand[:, None] - ring_o[None]).transpose(2, 0, 1))
    centres = cand[((np.abs(d - 2.6) < 0.05).sum(1) == 6) & (d.min(1) > 1.0)]  # the hexagons' empty centres
    some = [0]  # false O in a few centres that share no ring O (all of them would make a triangular lattice)
    for k in range(1, len(centres)):
        if np.hypot(*(centres[some] - centres[k]).T).min() > 6.0:
            some.append(k)
    centres = centres[some]
    assert len(centres) >= 4
    xy = np.vstack([ring_o, centres])
    rng = np.random.default_rng(0)
    # the network is often as sure of a centre as of the ring
    conf = np.concatenate([rng.uniform(0.5, 1.0, len(ring_o)), rng.uniform(0.6, 0.9, len(centres))])
    whole = assemble_molecules(_loose(xy, conf, ions=np.array([[-20.0, -20.0]])))
    out = drop_crowded(whole)
    kept = out.positions[out.arrays["label"] == "O", :2]
    assert len(kept) == len(ring_o)
    assert np.hypot(*(kept[:, None] - centres[None]).transpose(2, 0, 1)).min() > 1.0
    check_geometry(out)
    waters = _waters(out)
    assert sorted(np.unique(out.arrays["mol"]).tolist()) == list(range(len(waters) + 1))  # ids 0, 1, … again
    assert out.arrays["shell"][out.arrays["label"] == "Na"] == out.arrays["mol"][out.arrays["label"] == "Na"]


@pytest.mark.parametrize("lattice", ["square", "honeycomb"])
def test_layers_without_crowding_are_untouched(lattice):
    xy = (np.array([[i, j] for i in range(8) for j in range(8)]) * 2.83 if lattice == "square"
          else honeycomb(a=2.75))
    whole = assemble_molecules(_loose(xy, np.linspace(0.3, 1.0, len(xy))))
    assert len(drop_crowded(whole)) == len(whole)


def test_clear_h_peaks_are_reproduced():
    rng = np.random.default_rng(1)
    grid = np.array([[x, y, 0.0] for x in (3.0, 8.0, 13.0) for y in (3.0, 8.0, 13.0)])
    truth = np.vstack([random_water(rng, o) for o in grid])
    labels = atom_labels(truth, [8, 1, 1] * len(grid))
    mol = maps_to_molecules(label_maps(truth, labels, (80, 80), PX), PX)
    check_geometry(mol)
    assert (mol.arrays["label"] == "O").sum() == len(grid)
    for idx in _waters(mol):
        k = int(np.argmin(np.hypot(*(grid[:, :2] - mol.positions[idx[0], :2]).T)))
        true_h = truth[3 * k + 1 : 3 * k + 3]
        for i in idx[1:]:
            d = np.hypot(*(true_h[:, :2] - mol.positions[i, :2]).T)
            j = int(np.argmin(d))
            assert d[j] < 0.25
            assert mol.arrays["label"][i] == labels[3 * k + 1 + j]
            assert mol.arrays["confidence"][i] > 0.9


def test_bundled_bilayer_from_its_maps_and_from_o_alone():
    from hydrafm._sample_data import sample_path

    truth = read_xyz(sample_path("water_bilayer.xyz"))
    pos, lab = truth.positions, truth.arrays["label"]
    maps = label_maps(pos, lab, (125, 125), PX)
    mol = maps_to_molecules(maps, PX)
    check_geometry(mol)
    s = score_atoms(mol.positions[:, :2], mol.arrays["label"], pos, lab).summary()
    assert s["whole_molecules"] == 1.0 and s["H"]["f1"] == 1.0 and s["H_orientation"] == 1.0
    o_only = maps * np.array([1, 1, 1, 0, 0, 0], np.float32)[:, None, None]
    mol = maps_to_molecules(o_only, PX)
    check_geometry(mol)
    s = score_atoms(mol.positions[:, :2], mol.arrays["label"], pos, lab).summary()
    assert s["H"]["f1"] > 0.6  # from the H-bond geometry alone (no H in the maps)


def _o_maps(xy: np.ndarray, shape=(80, 80)) -> np.ndarray:
    pos = np.column_stack([xy, np.zeros(len(xy))])
    return label_maps(pos, ["O"] * len(xy), shape, PX)


def _h_bonds(mol: Atoms, max_angle: float = 25.0) -> set[tuple[int, int]]:
    """(donor O, acceptor O) index pairs: a level O–H within ``max_angle`` of an O at H-bond distance."""
    o = np.flatnonzero(mol.arrays["label"] == "O")
    out = set()
    for idx in _waters(mol):
        for i in idx[1:]:
            v = mol.positions[i] - mol.positions[idx[0]]
            for j in o:
                w = (mol.positions[j] - mol.positions[idx[0]])[:2]
                d = np.hypot(*w)
                cos = v[:2] @ w / (np.hypot(*v[:2]) * d + 1e-12)
                if ACCEPTOR[0] <= d <= ACCEPTOR[1] and abs(v[2]) < 0.5 and cos > np.cos(np.radians(max_angle)):
                    out.add((int(idx[0]), int(j)))
    return out


def honeycomb(a: float = 2.75, size: float = 24.0) -> np.ndarray:
    """O positions (x, y) of a hexagonal water layer, O–O ``a`` Å, inside a ``size`` Å window."""
    cells = [np.array([i * 1.5 * a, (j + (i % 2) / 2) * np.sqrt(3) * a]) for i in range(-4, 5) for j in range(-4, 5)]
    pts = np.array([p + d for p in cells for d in ([0.0, 0.0], [a, 0.0])]) + size / 2
    return pts[np.all((pts > 1) & (pts < size - 1), axis=1)]


@pytest.mark.parametrize("turn", [0, 17, 35])
def test_without_h_peaks_waters_donate_h_bonds_to_their_neighbours(turn):
    for r in (2.6, 2.75, 3.0):  # a ring of six
        ring = np.array([[8 + r * np.cos(a), 8 + r * np.sin(a)] for a in np.radians(np.arange(0, 360, 60) + turn)])
        mol = maps_to_molecules(_o_maps(ring), PX)
        check_geometry(mol)
        bonds = _h_bonds(mol)
        assert {d for d, _ in bonds} == set(np.flatnonzero(mol.arrays["label"] == "O").tolist())  # all donate
        assert not any((a, d) in bonds for d, a in bonds)  # no O–O bond carries two H
    c, s = np.cos(np.radians(turn)), np.sin(np.radians(turn))
    layer = (honeycomb() - 12) @ np.array([[c, -s], [s, c]]) + 12
    mol = maps_to_molecules(_o_maps(layer[np.all((layer > 1) & (layer < 23), axis=1)], (125, 125)), PX)
    check_geometry(mol)
    bonds = _h_bonds(mol)
    assert len({d for d, _ in bonds}) >= 0.9 * (mol.arrays["label"] == "O").sum()  # (edge O may not)
    assert not any((a, d) in bonds for d, a in bonds)
    # a pair: one H-bond between them
    mol = maps_to_molecules(_o_maps(np.array([[6.0, 8.0], [8.8, 8.0]])), PX)
    assert len(_h_bonds(mol)) == 1


def test_dangling_h_follow_weak_maps_up_or_down():
    for label in ("H_up", "H_down"):
        maps = _o_maps(np.array([[8.0, 8.0]]))
        maps[LABELS.index(label)] = 0.3 * label_maps(np.array([[8.0, 8.0, 0.0]]), ["O"], (80, 80), PX)[0]
        mol = maps_to_molecules(maps, PX, threshold=0.5)  # the H map stays below the threshold
        check_geometry(mol)
        assert label in mol.arrays["label"]


def test_ions_carry_their_hydration_shell():
    xy = np.array([[8.0, 8.0], [10.4, 8.0], [8.0, 12.6], [16.0, 8.0], [16.0, 11.3]])
    lab = ["Na", "O", "O", "K", "O"]  # O at 2.4 Å of Na (shell), 4.6 Å (not), 3.3 Å of K (shell)
    maps = label_maps(np.column_stack([xy, np.zeros(5)]), lab, (100, 100), PX)
    mol = maps_to_molecules(maps, PX)
    check_geometry(mol)
    labels, shell, ids = mol.arrays["label"], mol.arrays["shell"], mol.arrays["mol"]
    na, k = ids[labels == "Na"][0], ids[labels == "K"][0]
    o = np.flatnonzero(labels == "O")
    near = [int(np.argmin(np.hypot(*(xy - mol.positions[i, :2]).T))) for i in o]
    expect = {1: na, 2: -1, 4: k}
    for i, n in zip(o, near):
        assert np.all(shell[ids == ids[i]] == expect[n])
    # the shell water's H point away from the ion
    w = o[near.index(1)]
    for i in np.flatnonzero((ids == ids[w]) & (labels != "O")):
        assert (mol.positions[i, :2] - mol.positions[w, :2]) @ (xy[0] - xy[1]) <= 0.1
    # selecting the ion selects its cluster; selecting a water, the water
    ion = int(np.flatnonzero(labels == "Na")[0])
    assert set(molecule_members(ids, shell, [ion])) == {ion, *np.flatnonzero(ids == ids[w])}
    assert set(molecule_members(ids, shell, [w])) == set(np.flatnonzero(ids == ids[w]))
    assert list(molecule_members(np.array([-1, -1, 0, 0]), None, [0])) == [0]  # hand-placed atoms stand alone


def _ion_site(shell_distance: float, na: float, k: float) -> np.ndarray:
    """Maps of an ion at (10, 10) Å with three O ``shell_distance`` Å away, its Na / K maps ``na`` / ``k`` high."""
    angles = np.radians([0.0, 120.0, 240.0])
    xy = np.vstack([[10.0, 10.0], 10.0 + shell_distance * np.column_stack([np.cos(angles), np.sin(angles)])])
    maps = label_maps(np.column_stack([xy, np.zeros(4)]), ["Na", "O", "O", "O"], (100, 100), PX)
    blob = maps[LABELS.index("Na")].copy()
    maps[LABELS.index("Na")] = na * blob
    maps[LABELS.index("K")] = k * blob
    return maps


def _ion(maps: np.ndarray) -> str:
    lab = maps_to_molecules(maps, PX).arrays["label"]
    ions = lab[np.isin(lab, ("Na", "K"))]
    assert len(ions) == 1
    return str(ions[0])


def test_a_contested_ion_is_named_by_its_hydration_shell(monkeypatch):
    # off by default: the larger map decides
    assert molecules.ION_SHELL_WEIGHT == 0
    assert _ion(_ion_site(2.8, na=0.8, k=0.75)) == "Na"
    monkeypatch.setattr(molecules, "ION_SHELL_WEIGHT", 2.0)
    monkeypatch.setattr(molecules, "ION_SHELL_SPLIT", 2.45)
    # both maps show an ion, Na a little more: a K-sized shell (2.8 Å) makes it K, a Na-sized one (2.35 Å) Na
    assert _ion(_ion_site(2.8, na=0.8, k=0.75)) == "K"
    assert _ion(_ion_site(2.35, na=0.8, k=0.75)) == "Na"
    assert _ion(_ion_site(2.35, na=0.75, k=0.8)) == "Na"
    # a clear map wins over a shell between the two sizes; a site only one map shows keeps its name
    assert _ion(_ion_site(2.55, na=0.95, k=0.55)) == "Na"
    assert _ion(_ion_site(2.55, na=0.7, k=0.65)) == "K"
    assert _ion(_ion_site(2.35, na=0.3, k=0.8)) == "K"


def test_mol_and_shell_survive_xyz_and_points(tmp_path):
    xy = np.array([[8.0, 8.0], [10.4, 8.0], [5.0, 4.0]])
    maps = label_maps(np.column_stack([xy, np.zeros(3)]), ["Na", "O", "O"], (80, 80), PX)
    mol = maps_to_molecules(maps, PX)
    back = read_xyz(write_xyz(mol, tmp_path / "m.xyz"))
    for name in ("mol", "shell"):
        np.testing.assert_array_equal(back.arrays[name], mol.arrays[name])
    np.testing.assert_array_equal(back.arrays["label"], mol.arrays["label"])
    coords, feats = atoms_to_points(back)
    again = points_to_atoms(coords, feats)
    np.testing.assert_array_equal(again.arrays["mol"], mol.arrays["mol"])
    loose = maps_to_atoms(maps, PX)
    assert atoms_to_points(loose)[1]["mol"].tolist() == [-1] * len(loose)


def test_molecule_confidence_from_o_and_h():
    atoms = Atoms("OHHOHHNa", positions=np.zeros((7, 3)))
    atoms.new_array("label", np.array(["O", "H_up", "H_flat", "O", "H_up", "H_flat", "Na"]))
    atoms.new_array("confidence", np.array([0.8, 1.0, 1.0, 0.8, 0.0, 0.0, 0.7]))
    atoms.new_array("mol", np.array([0, 0, 0, 1, 1, 1, 2]))
    ids, conf = molecule_confidence(atoms)
    assert ids.tolist() == [0, 1, 2]
    np.testing.assert_allclose(conf, [0.8, 0.4, 0.7])


def test_whole_molecule_metric():
    rng = np.random.default_rng(3)
    grid = np.array([[3.0, 3.0, 0.0], [8.0, 3.0, 0.0], [3.0, 8.0, 0.0], [8.0, 8.0, -5.0]])  # the last is deep
    truth = np.vstack([random_water(rng, o) for o in grid])
    lab = atom_labels(truth, [8, 1, 1] * 4)
    s = score_atoms(truth[:, :2], lab, truth, lab)
    assert (s.water_visible, s.water_whole) == (3, 3) and s.summary()["whole_molecules"] == 1.0
    pred = truth[:9].copy()
    keep = np.ones(9, bool)
    keep[5] = False  # the second water loses an H
    pred[6, 0] += 0.8  # the third water's O is 0.8 Å off
    s = score_atoms(pred[keep, :2], lab[:9][keep], truth, lab).summary()
    assert s["whole_molecules"] == pytest.approx(1 / 3, abs=1e-3) and s["water_molecules"] == 3
    # counts add up over stacks
    total = score_atoms(truth[:, :2], lab, truth, lab).add(score_atoms(pred[keep, :2], lab[:9][keep], truth, lab))
    assert total.summary()["whole_molecules"] == pytest.approx(4 / 6, abs=1e-3)


def test_loose_atoms_pass_through_assembly_unchanged_in_place():
    maps = label_maps(np.array([[5.0, 5.0, 0.0], [5.9, 5.0, 0.0]]), ["O", "H_flat"], (50, 50), PX)
    loose = maps_to_atoms(maps, PX)
    before = loose.positions.copy()
    mol = assemble_molecules(loose, maps, PX)
    np.testing.assert_array_equal(loose.positions, before)
    assert "mol" not in loose.arrays and len(mol) == 3
    h = mol.positions[mol.arrays["label"] == "H_flat"]
    assert np.min(np.hypot(*(h[:, :2] - [5.9, 5.0]).T)) < 0.1  # the H peak kept its place


def test_h_peaks_without_an_o_stay_single_and_a_third_h_is_dropped():
    pos = np.array([[5.0, 5.0, 0.0], [5.97, 5.0, 0.0], [4.5, 5.8, 0.0], [4.6, 4.2, 0.0],  # O and three H peaks
                    [12.0, 12.0, 0.0]])  # an H with no O within 1.3 Å
    maps = label_maps(pos, ["O", "H_flat", "H_flat", "H_flat", "H_up"], (80, 80), PX)
    mol = maps_to_molecules(maps, PX)
    check_geometry(mol)
    lab, ids = mol.arrays["label"], mol.arrays["mol"]
    assert len(mol) == 4 and (ids == -1).sum() == 1 and lab[ids == -1][0] == "H_up"
    np.testing.assert_allclose(mol.positions[ids == -1][0, :2], [12.0, 12.0], atol=0.05)
    strict = assemble_molecules(maps_to_atoms(maps, PX), maps, PX, keep_orphan_h=False)
    assert len(strict) == 3 and np.all(strict.arrays["mol"] == 0)


def test_of_three_h_peaks_around_an_o_the_weakest_is_left_out():
    # the lower half of a bilayer: the network puts H_flat peaks in all three H-bond directions;
    # the nearest (0.80 Å) is the weakest, the two kept are the confident ones (0.95 Å)
    o = np.array([5.0, 5.0])
    dirs = np.array([[np.cos(a), np.sin(a)] for a in np.radians([90.0, 210.0, 330.0])])
    h = o + dirs * np.array([[0.95], [0.95], [0.80]])
    pos = np.column_stack([np.vstack([o, h]), np.zeros(4)])
    lab = np.array(["O", "H_flat", "H_flat", "H_flat"], dtype="<U6")
    loose = Atoms(symbols=["O", "H", "H", "H"], positions=pos)
    loose.new_array("label", lab)
    loose.new_array("confidence", np.array([0.9, 0.8, 0.75, 0.45]))
    mol = assemble_molecules(loose, keep_orphan_h=False)
    check_geometry(mol)
    got = mol.positions[np.char.startswith(mol.arrays["label"].astype(str), "H")][:, :2]
    assert len(got) == 2
    kept = [int(np.argmin(np.linalg.norm(h - g, axis=1))) for g in got]
    assert sorted(kept) == [0, 1]
    assert max(np.min(np.linalg.norm(h[:2] - g, axis=1)) for g in got) < 0.3


def test_a_water_slides_towards_its_h_peaks_when_asked(monkeypatch):
    # a flat water whose O peak is 0.3 Å off the true O; its two H peaks are right
    b = np.radians(HOH_ANGLE / 2)
    o = np.array([5.0, 5.0, 0.0])
    h = o + OH_LENGTH * np.array([[np.cos(b), np.sin(b), 0.0], [np.cos(b), -np.sin(b), 0.0]])
    rows = [("O", *(o[:2] + [0.0, 0.3])), ("H_flat", *h[0, :2]), ("H_flat", *h[1, :2])]
    loose = Atoms("OHH", positions=[(x, y, 0.0) for _, x, y in rows])
    loose.new_array("label", np.array([r[0] for r in rows], dtype="<U6"))
    loose.new_array("confidence", np.ones(3))

    def h_miss(mol):
        found = mol.positions[mol.arrays["label"] != "O", :2]
        return float(np.max(np.min(np.hypot(*(found[:, None] - h[None, :, :2]).transpose(2, 0, 1)), axis=1)))

    monkeypatch.setattr(molecules, "FIT_SHIFT", 0.0)
    still = assemble_molecules(loose)
    assert np.allclose(still.positions[0, :2], o[:2] + [0.0, 0.3])  # the O stays on its peak
    monkeypatch.setattr(molecules, "FIT_SHIFT", 1.0)
    slid = assemble_molecules(loose)
    check_geometry(slid)
    assert np.hypot(*(slid.positions[0, :2] - o[:2])) < 0.22  # the O slides towards the true O (from 0.3 Å)
    assert h_miss(slid) < h_miss(still)
