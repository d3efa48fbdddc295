"""Refine: molecules fitted to a stack through the torch engine (tiny grids, a few waters)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from ase import Atoms

from hydrafm.io.npz import save_npz
from hydrafm.io.xyz import read_xyz, write_xyz
from hydrafm.progress import Progress
from hydrafm.refine import RefineSettings, RefineSnapshot, iter_refine_atoms, refine_atoms
from hydrafm.refine.bodies import flip_orientations, group_atoms, hbond_consistent, hbond_orientations, rotate
from hydrafm.simulate.engine import TorchSimulator
from hydrafm.simulate.labels import atom_labels, h_labels
from hydrafm.simulate.settings import SampledTip, SimulationSettings

SETTINGS = SimulationSettings(n_pixels=40, scan_size=8.0, n_heights=6, dz=0.1, df_steps=4)
# declash off: in POSITIONS two H of different waters are 1.52 Å apart, closer than the refine prior allows
# (1.6 Å), so pushing the start apart first would move it away from the truth these tests recover
FAST = RefineSettings(steps=30, move_rounds=0, declash=False, base=SETTINGS)


def _water(centre, azimuth, up=0.0):
    """A rigid water (0.97 Å, 104.5°); its first H tilted ``up`` degrees, the second level."""
    a, e = np.radians(104.5) / 2, np.radians(up)
    c = np.asarray(centre, float)
    h1 = np.array([np.cos(azimuth + a) * np.cos(e), np.sin(azimuth + a) * np.cos(e), np.sin(e)]) * 0.97
    h2 = np.array([np.cos(azimuth - a), np.sin(azimuth - a), 0.0]) * 0.97
    return [c, c + h1, c + h2]


POSITIONS = np.array(_water((2.5, 2.6, 0.0), 0.3, 50) + _water((5.2, 3.0, 0.1), 2.0)
                     + _water((3.6, 5.4, -0.2), 4.0, -50))
NUMBERS = np.array([8, 1, 1] * 3)


@pytest.fixture(scope="module")
def stack():
    torch.set_num_threads(1)
    return TorchSimulator(SETTINGS).simulate(POSITIONS, NUMBERS, SampledTip(2.6))


def _atoms(positions, mol=True):
    atoms = Atoms(numbers=NUMBERS, positions=positions)
    atoms.new_array("label", atom_labels(positions, NUMBERS))
    atoms.new_array("confidence", np.full(len(NUMBERS), 0.8))
    if mol:
        atoms.new_array("mol", np.repeat(np.arange(3), 3))
    return atoms


def test_molecules_without_mol_are_grouped_by_the_nearest_o_rule():
    body = group_atoms(_atoms(POSITIONS, mol=False))
    assert body.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_flip_orientations_change_exactly_one_h_class_and_keep_the_water_rigid():
    o, hs = POSITIONS[0], POSITIONS[1:3]
    current = tuple(h_labels(hs - o))
    flips = flip_orientations(o, hs)
    assert 2 <= len(flips) <= 4
    for classes, new in flips:
        assert sum(a != b for a, b in zip(classes, current)) == 1
        assert tuple(h_labels(new - o)) == classes
        assert np.allclose(np.linalg.norm(new - o, axis=1), np.linalg.norm(hs - o, axis=1))
        assert np.isclose(np.linalg.norm(new[0] - new[1]), np.linalg.norm(hs[0] - hs[1]))


def test_hbond_orientations_point_the_h_at_neighbours_and_leave_their_bonds_alone():
    o = np.zeros(3)
    ring = np.array([[2.75 * np.cos(a), 2.75 * np.sin(a), 0.1 * k] for k, a in enumerate(np.radians([0, 120, 240]))])
    dirs = ring / np.linalg.norm(ring, axis=1, keepdims=True)
    half = np.radians(104.5) / 2
    bis = (dirs[0] + dirs[1]) / np.linalg.norm(dirs[0] + dirs[1])
    perp = (dirs[0] - dirs[1]) / np.linalg.norm(dirs[0] - dirs[1])
    truth = 0.97 * np.stack([np.cos(half) * bis + np.sin(half) * perp, np.cos(half) * bis - np.sin(half) * perp])
    assert hbond_consistent(o, truth, ring)
    wrong = rotate(truth, np.array([1.0, 0.3, 0.2]) / np.linalg.norm([1.0, 0.3, 0.2]), np.radians(100))
    assert not hbond_consistent(o, wrong, ring)
    # neighbour 2 donates an H towards this O: no candidate may put an H on that bond
    h_of_2 = ring[2] - 0.97 * dirs[2]
    cands = hbond_orientations(o, wrong, ring, h_of_2[None])
    assert cands
    for classes, h in cands:
        assert np.allclose(np.linalg.norm(h - o, axis=1), 0.97, atol=1e-6)
        assert np.isclose(np.degrees(np.arccos((h[0] - o) @ (h[1] - o) / 0.97**2)), 104.5, atol=1e-4)
        assert np.linalg.norm(h - h_of_2, axis=1).min() >= 1.5
        assert tuple(h_labels(h - o)) == classes
    best = [min(np.abs(h - o - truth).max(), np.abs(h[::-1] - o - truth).max()) for _, h in cands]
    assert min(best) < 1e-6  # the H-bonded pose is among them
    # a water already on it gets no candidate equal to itself
    assert all(min(np.abs(h - o - truth).max(), np.abs(h[::-1] - o - truth).max()) > 0.3
               for _, h in hbond_orientations(o, truth, ring, h_of_2[None]))


def test_a_perturbed_structure_is_pulled_back(stack):
    rng = np.random.default_rng(1)
    start = POSITIONS.copy()
    for m in range(3):  # each molecule shifted rigidly by ~0.3 Å
        start[3 * m:3 * m + 3] += rng.normal(0, 0.3 / np.sqrt(3), 3)
    records = []
    gen = iter_refine_atoms(stack, _atoms(start), replace(FAST, steps=60))
    while True:
        try:
            records.append(next(gen))
        except StopIteration as stop:
            res = stop.value
            break
    assert any(isinstance(r, Progress) for r in records)
    snaps = [r for r in records if isinstance(r, RefineSnapshot)]
    assert snaps and snaps[-1].residual.shape == stack.data.shape
    assert res.image_loss[1] < 0.1 * res.image_loss[0]
    lateral = lambda p: np.hypot(*(p - POSITIONS)[:, :2].T)  # noqa: E731
    before, after = lateral(start), lateral(res.atoms.positions)
    assert after.mean() < 0.5 * before.mean() and after.max() < 0.2
    assert res.similarity.mean() > res.similarity_before.mean()
    assert np.abs(res.residual).mean() < np.abs(res.residual_before).mean()
    assert list(res.atoms.arrays["label"]) == list(atom_labels(POSITIONS, NUMBERS))
    assert set(res.fit_score) == {0, 1, 2} and all(0.5 < v <= 1 for v in res.fit_score.values())
    assert np.all(res.atoms.arrays["mol"] == np.repeat(np.arange(3), 3))


def _flip_one(positions, m=1):
    """Water ``m`` turned about its O–H bond 0 so that its level H points down (a wrong H class)."""
    p = positions.copy()
    o, hs = p[3 * m], p[3 * m + 1:3 * m + 3]
    axis = (hs[0] - o) / np.linalg.norm(hs[0] - o)
    for deg in range(20, 360, 10):
        new = o + rotate(hs - o, axis, np.radians(deg))
        if h_labels(new - o)[1] == "H_down" and abs(np.degrees(np.arcsin((new[1] - o)[2] / 0.97))) > 40:
            p[3 * m + 1:3 * m + 3] = new
            return p
    raise AssertionError("no flip found")


def test_a_right_h_flip_is_kept_and_a_wrong_one_is_not(stack):
    wrong = _flip_one(POSITIONS)
    assert list(atom_labels(wrong, NUMBERS)) != list(atom_labels(POSITIONS, NUMBERS))
    moves = replace(FAST, steps=0, move_rounds=1, flips=True, add=False, remove=False)
    fixed = refine_atoms(stack, _atoms(wrong), moves)
    assert fixed.moves["flips"] == 1
    assert list(fixed.atoms.arrays["label"]) == list(atom_labels(POSITIONS, NUMBERS))
    assert np.allclose(fixed.atoms.positions[[0, 1, 2, 6, 7, 8]], POSITIONS[[0, 1, 2, 6, 7, 8]], atol=1e-6)
    kept = refine_atoms(stack, _atoms(POSITIONS), moves)  # every class right: no flip lowers the loss
    assert kept.moves["flips"] == 0
    assert np.allclose(kept.atoms.positions, POSITIONS, atol=1e-6)


def _network():
    """A water donating flat H bonds to two of three neighbours 2.75 Å away (the third donates nothing)."""
    centre = np.array([4.0, 4.0, 0.0])
    dirs = np.array([[np.cos(a), np.sin(a), 0.0] for a in np.radians([0, 120, 240])])
    half = np.radians(104.5) / 2
    bis, perp = (dirs[0] + dirs[1]) / np.linalg.norm(dirs[0] + dirs[1]), (dirs[0] - dirs[1]) / np.sqrt(3)
    hs = centre + 0.97 * np.stack([np.cos(half) * bis + np.sin(half) * perp, np.cos(half) * bis - np.sin(half) * perp])
    pos = [centre, *hs]
    for k, d in enumerate(dirs):  # each neighbour: an H dangling up, the other level and pointing away
        pos += _water(centre + 2.75 * d, np.arctan2(d[1], d[0]) + np.radians(52.25), 70)
    return np.array(pos), np.array([8, 1, 1] * 4)


def test_a_wrongly_turned_water_in_a_network_is_turned_back_by_the_hbond_turns():
    truth, numbers = _network()
    stack = TorchSimulator(SETTINGS).simulate(truth, numbers, SampledTip(2.6))
    start = truth.copy()
    start[1:3] = truth[0] + rotate(truth[1:3] - truth[0], np.array([0.6, -0.3, 0.74]) / np.linalg.norm([0.6, -0.3, 0.74]),
                                   np.radians(110))
    assert list(atom_labels(start, numbers)) != list(atom_labels(truth, numbers))
    atoms = Atoms(numbers=numbers, positions=start)
    atoms.new_array("mol", np.repeat(np.arange(4), 3))
    res = refine_atoms(stack, atoms, replace(FAST, steps=0, move_rounds=1, hbond_turns=True))
    assert res.moves["flips"] == 1
    assert list(res.atoms.arrays["label"]) == list(atom_labels(truth, numbers))
    assert np.abs(res.atoms.positions[3:] - truth[3:]).max() < 1e-6  # the neighbours are left alone
    assert np.abs(res.atoms.positions[:3] - truth[:3]).max() < 0.3
    atoms.positions = truth  # from the truth, the neighbours' H-bond turns are all refused
    kept = refine_atoms(stack, atoms, replace(FAST, steps=0, move_rounds=1, hbond_turns=True))
    assert kept.moves["flips"] == 0 and np.allclose(kept.atoms.positions, truth, atol=1e-6)


def test_a_water_the_fit_dragged_is_offered_its_starting_place_in_its_hbond_orientations():
    from hydrafm.refine.fit import _dragged_back

    truth, numbers = _network()
    others = np.arange(len(truth)) >= 3  # the first water is the one dragged; its neighbours stay
    other_o, other_h = others & (numbers == 8), others & (numbers == 1)
    dragged = truth.copy()
    dragged[:3] += [0.45, -0.2, 0.05]  # the fit moved it 0.49 Å sideways
    on = replace(FAST, hbond_turns=True, drag_turns=0.3)
    back = _dragged_back(truth, dragged, 0, np.array([1, 2]), other_o, other_h, on)
    assert back[0][0] == ("start",) and np.allclose(back[0][1], truth[:3])  # as it started, first
    assert len(back) > 1
    for classes, pose in back:
        assert np.allclose(pose[0], truth[0])  # every candidate at the starting place
        assert np.allclose(np.linalg.norm(pose[1:] - pose[0], axis=1), 0.97, atol=1e-3)
    assert _dragged_back(truth, dragged, 0, np.array([1, 2]), other_o, other_h, replace(on, drag_turns=0.6)) == []
    assert _dragged_back(truth, dragged, 0, np.array([1, 2]), other_o, other_h, replace(on, drag_turns=0)) == []
    assert _dragged_back(None, dragged, 0, np.array([1, 2]), other_o, other_h, on) == []


def test_an_unsupported_molecule_is_removed_and_none_is_added_where_nothing_is_missing(stack):
    extra = np.concatenate([POSITIONS, np.array(_water((6.2, 6.3, 0.0), 1.0))])
    atoms = Atoms(numbers=np.concatenate([NUMBERS, [8, 1, 1]]), positions=extra)
    atoms.new_array("label", atom_labels(extra, atoms.numbers))
    # (the first round never removes: the structure is not fitted yet)
    res = refine_atoms(stack, atoms, replace(FAST, steps=0, move_rounds=2, flips=False, add=False, remove=True))
    assert res.moves["removed"] == 1 and len(res.atoms) == 9
    assert np.allclose(np.sort(res.atoms.positions, axis=0), np.sort(POSITIONS, axis=0), atol=1e-6)
    res = refine_atoms(stack, _atoms(POSITIONS), replace(FAST, steps=0, move_rounds=2, flips=False, add=True))
    assert res.moves == {"flips": 0, "added": 0, "removed": 0} and len(res.atoms) == 9


def test_frame_scale_offset_and_distance_are_fitted(stack):
    scale = np.linspace(1.5, 2.5, stack.n_heights)
    offset = np.linspace(-3.0, 3.0, stack.n_heights)
    measured = replace(stack, data=(stack.data * scale[:, None, None] + offset[:, None, None]).astype(np.float32),
                       metadata={**stack.metadata, "units": "a.u."})
    res = refine_atoms(measured, _atoms(POSITIONS), replace(FAST, steps=0))
    assert np.allclose(res.tip.scale, scale, rtol=0.03) and np.allclose(res.tip.offset, offset, atol=0.05 * 2.5)
    assert res.similarity.min() > 0.999
    far = TorchSimulator(SETTINGS).simulate(POSITIONS, NUMBERS, SampledTip(2.75))
    res = refine_atoms(far, _atoms(POSITIONS), replace(FAST, steps=60, distances=(2.5,)))
    # the tip coming closer and the molecules rising are the same thing: the gap is what is fitted
    rise = float(np.mean(res.atoms.positions[:, 2] - POSITIONS[:, 2]))
    assert res.tip.distance - rise == pytest.approx(2.75, abs=0.05)
    assert res.image_loss[1] < 0.1 * res.image_loss[0]


def test_the_default_distance_search_reaches_far_tips():
    """A stack measured 3.7 Å above its top atom (real closest frames reach 3.8 Å): the default search starts
    the fit within 0.15 Å of it; the grid before (up to 3.2 Å) started 0.5 Å short."""
    far = TorchSimulator(SETTINGS).simulate(POSITIONS, NUMBERS, SampledTip(3.7))
    res = refine_atoms(far, _atoms(POSITIONS), replace(FAST, steps=0, distances=RefineSettings().distances))
    assert res.tip.distance == pytest.approx(3.7, abs=0.15)
    assert min(RefineSettings().distances) <= 2.3 and max(RefineSettings().distances) >= 3.8


def test_the_tip_charge_fitted_in_tenths_of_an_e_comes_back_to_the_truth():
    """``charge_unit=0.1``: the optimiser sees the charge in 0.1 e, so its first steps are not all charge
    (in 1 e units this case runs away to +0.64 e and 2.13 Å, loss 0.23)."""
    charged = TorchSimulator(SETTINGS).simulate(POSITIONS, NUMBERS, SampledTip(2.6, charge=0.1))
    res = refine_atoms(charged, _atoms(POSITIONS), replace(FAST, steps=30, distances=(2.6,), charge_unit=0.1))
    assert res.tip.charge == pytest.approx(0.1, abs=0.04)
    assert res.image_loss[1] < 0.15 * res.image_loss[0]


def test_the_tip_distance_search_starts_from_predicts_closest_probe_estimate(stack):
    # the stack's probe is 2.6 Å above its highest atom (an H_up); Predict's estimate counts from the top O
    o_top = POSITIONS[NUMBERS == 8, 2].max()
    estimate = 2.6 + POSITIONS[:, 2].max() - o_top
    # the fixed grid far from the truth; the estimate on
    cfg = replace(FAST, steps=0, distances=(2.0, 3.4), probe_estimate=0.2)
    atoms = _atoms(POSITIONS)
    def grid(res) -> bool:
        return min(abs(res.tip.distance - d) for d in cfg.distances) < 1e-3

    assert grid(refine_atoms(stack, atoms, cfg))
    atoms.info["closest_probe"] = round(estimate, 3)
    off = replace(cfg, probe_estimate=RefineSettings().probe_estimate)  # the default
    assert grid(refine_atoms(stack, atoms, off))
    assert refine_atoms(stack, atoms, cfg).tip.distance == pytest.approx(2.6, abs=1e-3)
    atoms.info["closest_probe"] = round(estimate + 0.8, 3)  # a poor estimate: the nearest of its three
    assert refine_atoms(stack, atoms, cfg).tip.distance == pytest.approx(3.2, abs=1e-3)
    assert grid(refine_atoms(stack, atoms, replace(cfg, probe_estimate=None)))
    atoms.info["closest_probe"] = "not a number"  # e.g. a hand-edited .xyz: ignored
    assert grid(refine_atoms(stack, atoms, cfg))


def test_overlapping_molecules_are_first_moved_apart_by_little():
    from hydrafm.refine.fit import _declash, _structure_of

    # two waters whose O are 1.8 Å apart at one height (as Predict puts the two halves of a bilayer)
    pos = np.array(_water((3.0, 3.0, 0.0), 0.0) + _water((4.8, 3.0, 0.0), np.pi))
    atoms = Atoms(numbers=[8, 1, 1] * 2, positions=pos)
    atoms.new_array("mol", np.repeat(np.arange(2), 3))
    out = _declash(_structure_of(atoms, pos), FAST).positions
    o = out[[0, 3]]
    assert np.linalg.norm(o[0] - o[1]) > 2.3  # apart (the prior's 2.4 Å, to within its soft edge)
    shift = np.linalg.norm(out - pos, axis=1)
    assert shift.max() < 0.5  # each by about half the overlap (0.3 Å), not more
    assert np.allclose(_declash(_structure_of(atoms, out), FAST).positions, out, atol=1e-3)  # nothing left to do


def test_an_h_h_overlap_is_cleared_by_turning_when_turns_are_cheap():
    from hydrafm.refine.fit import _declash, _structure_of

    # two waters 2.6 Å apart, each with an H near the O···O line: their H overlap (0.7 Å), the O do not
    # (exactly on the line, the overlap would give no torque at all)
    a = np.radians(104.5) / 2
    pos = np.array(_water((3.0, 3.0, 0.0), -a + 0.2) + _water((5.6, 3.0, 0.0), np.pi - a))
    assert np.linalg.norm(pos[1] - pos[4]) < 0.8
    atoms = Atoms(numbers=[8, 1, 1] * 2, positions=pos)
    atoms.new_array("mol", np.repeat(np.arange(2), 3))
    o_shift = {}
    for cost in (1.0, 0.1):
        out = _declash(_structure_of(atoms, pos), replace(FAST, declash_turn_cost=cost)).positions
        assert np.linalg.norm(out[1] - out[4]) > 1.3  # the overlap is gone either way
        o_shift[cost] = np.linalg.norm(out[[0, 3]] - pos[[0, 3]], axis=1).max()
    assert o_shift[0.1] < 0.15 < o_shift[1.0]  # cheap turns keep the O in place


def test_the_hbond_prior_pulls_a_stretched_hbond_straight_and_back_to_length():
    from hydrafm.refine.fit import HBOND_LENGTH, HBOND_OO, HBOND_WEIGHT, _Priors, _structure_of

    # a donor water 3.3 Å from an acceptor, its second H pointing 25° beside the O···O line: too far to be bonded
    a = np.radians(104.5) / 2
    pos = np.array(_water((3.0, 3.0, 0.0), a + np.radians(25)) + _water((6.3, 3.0, 0.0), 0.0))  # its H point away
    assert np.linalg.norm(pos[2] - pos[3]) > 2.3
    atoms = Atoms(numbers=[8, 1, 1] * 2, positions=pos)
    atoms.new_array("mol", np.repeat(np.arange(2), 3))
    structure = _structure_of(atoms, pos)
    bodies = structure.bodies
    out = {}
    for weight in (0.0, 1.0):
        priors = _Priors(structure, replace(FAST, hbond=weight), "cpu", torch.float64)
        t = torch.zeros((2, 3), dtype=torch.float64, requires_grad=True)
        w = torch.zeros((2, 3), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([t, w], max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = priors(bodies.posed(t, w), t, None)
            loss.backward()
            return loss

        opt.step(closure)
        out[weight] = bodies.posed(t, w).detach().numpy()
    assert np.allclose(out[0.0], pos, atol=1e-6)  # off: nothing moves (no clash either)
    p = out[1.0]
    assert abs(np.linalg.norm(p[2] - p[3]) - HBOND_LENGTH) < 0.1  # the H···O distance of a bond
    assert abs(np.linalg.norm(p[0] - p[3]) - HBOND_OO) < 0.1  # and O···O: straight
    assert np.linalg.norm(p[[0, 3]] - pos[[0, 3]], axis=1).max() < 0.5  # by moving both a little
    # by default on with the H-bond turns (ice-like layers) only
    assert _Priors(structure, replace(FAST, hbond_turns=True), "cpu", torch.float64).hbond == HBOND_WEIGHT
    assert _Priors(structure, FAST, "cpu", torch.float64).hbond == 0.0


def test_a_non_finite_drift_trial_does_not_crash_the_backward_pass():
    from hydrafm.refine.fit import _drift

    # a line search once tried a NaN drift; grid_sample's CPU backward segfaulted on it
    frames = torch.rand(1, 4, 12, 12, requires_grad=True)
    for bad in (float("nan"), float("inf"), 1e30):
        drift = torch.tensor([bad, 0.1], requires_grad=True)
        out = _drift(frames, drift, 0.2)
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(frames.grad).all()


def test_a_lone_h_keeps_its_class(stack):
    """An H peak with no O (``mol`` −1, Predict saw the H but not its O) has no bond to re-class it by: it
    keeps Predict's label (it once came back H_flat whatever it was, which cost hydrates 0.16 of H class)."""
    atoms = _atoms(POSITIONS)
    lone = Atoms(numbers=[1, 1], positions=[[6.5, 6.5, 0.6], [1.0, 6.8, -0.5]])
    lone.new_array("label", np.array(["H_up", "H_down"]))
    lone.new_array("confidence", np.full(2, 0.6))
    lone.new_array("mol", np.full(2, -1))
    res = refine_atoms(stack, atoms + lone, replace(FAST, steps=2))
    labels = res.atoms.arrays["label"]
    assert list(labels[-2:]) == ["H_up", "H_down"]
    assert list(res.atoms.arrays["mol"][-2:]) == [-1, -1]  # still no molecule: not given an id of its own
    assert -1 not in res.fit_score and len(res.fit_score) == 3
    assert np.isfinite(res.atoms.arrays["fit"][-2:]).all()  # but each still has its fit
    assert list(labels[:9]) == list(atom_labels(res.atoms.positions[:9], NUMBERS))  # waters: from the geometry
    bare = atoms + lone
    bare.arrays["label"] = np.array(bare.get_chemical_symbols(), dtype="<U6")  # no classes given: "H"
    assert set(refine_atoms(stack, bare, replace(FAST, steps=0)).atoms.arrays["label"][-2:]) == {"H_flat"}


def test_bad_input_is_refused(stack):
    with pytest.raises(ValueError, match="no atoms"):
        refine_atoms(stack, Atoms(), FAST)
    with pytest.raises(ValueError, match="at least two heights"):
        refine_atoms(replace(stack, data=stack.data[:1], heights=stack.heights[:1]), _atoms(POSITIONS), FAST)
    outside = _atoms(POSITIONS + [50.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="inside the scan"):
        refine_atoms(stack, outside, FAST)


def test_cli_refines_and_refuses_to_overwrite(stack, tmp_path, capsys):
    from hydrafm import cli

    stack_path = save_npz(stack, tmp_path / "stack.npz")
    atoms_path = write_xyz(_atoms(POSITIONS + [0.1, -0.1, 0.0]), tmp_path / "atoms.xyz")
    out = tmp_path / "refined.xyz"
    assert cli.main(["refine", str(stack_path), str(atoms_path), "-o", str(out), "--steps", "4",
                     "--device", "cpu"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["output"] == str(out) and line["atoms"]["O"] == 3
    refined = read_xyz(out)
    assert len(refined) == 9 and "mol" in refined.arrays
    fit = refined.arrays["fit"]  # the per-molecule fit score travels with the atoms
    assert fit.shape == (9,) and np.isfinite(fit).all()
    assert cli.main(["refine", str(stack_path), str(atoms_path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["refine", str(stack_path), str(atoms_path), "-o", str(out), "--steps", "2", "--hbond-turns",
                     "--overwrite", "--device", "cpu"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(line["moves"]) == {"flips", "added", "removed"} and len(read_xyz(out)) == 9
    assert cli.main(["refine", str(stack_path), str(atoms_path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["refine", str(stack_path), str(tmp_path / "none.xyz"), "-o", str(tmp_path / "x.xyz")]) == 2
    assert "none.xyz" in capsys.readouterr().err
    assert cli.main(["refine", str(stack_path), str(atoms_path), "-o", str(tmp_path / "y.xyz"),
                     "--steps", "-1"]) == 2
    assert "--steps" in capsys.readouterr().err
    far = write_xyz(_atoms(POSITIONS + [50.0, 0.0, 0.0]), tmp_path / "far.xyz")
    assert cli.main(["refine", str(stack_path), str(far), "-o", str(tmp_path / "w.xyz")]) == 2
    err = capsys.readouterr().err  # the files are named with the reason
    assert str(stack_path) in err and "far.xyz" in err and "inside the scan" in err
    guessed = _atoms(POSITIONS)
    guessed.info["closest_probe"] = 2.6 + POSITIONS[:, 2].max() - POSITIONS[NUMBERS == 8, 2].max()
    guessed_path = write_xyz(guessed, tmp_path / "guessed.xyz")  # as `hydrafm predict` writes it
    assert cli.main(["refine", str(stack_path), str(guessed_path), "-o", str(tmp_path / "z.xyz"),
                     "--steps", "0", "--probe-estimate", "--device", "cpu"]) == 0
    d = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tip"]["distance"]
    # searched around the estimate (which the declash shifts a little), not on the fixed grid
    assert abs(d - 2.6) < 0.3 and min(abs(d - g) for g in RefineSettings().distances) > 1e-3


@pytest.mark.gui
def test_refine_button_updates_the_points_in_place_and_undo_puts_them_back(stack, make_napari_viewer, qtbot,
                                                                            tmp_path, monkeypatch):
    pytest.importorskip("napari")
    from hydrafm._layers import ATOMS_KEY, atoms_layer_data, stack_layer_data
    from hydrafm.widgets._common import atoms_of_layer
    from hydrafm.widgets.predict import WARM_UP_NAME, PredictWidget

    monkeypatch.setenv("HYDRAFM_DATA", str(tmp_path / "data"))
    viewer = make_napari_viewer()
    data, kwargs, _ = stack_layer_data(stack, "tiny stack")
    viewer.add_image(data, **kwargs)
    start = POSITIONS + np.array([0.15, -0.1, 0.0])
    data, kwargs, _ = atoms_layer_data(_atoms(start), "atoms (tiny stack)", {"stack": "tiny stack"})
    points = viewer.add_points(data, **kwargs)
    assert "closest_probe" not in atoms_of_layer(points).info
    points.metadata[ATOMS_KEY]["closest_probe"] = 3.2  # as Predict leaves it (Refine may start there)
    assert atoms_of_layer(points).info["closest_probe"] == 3.2
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    qtbot.waitUntil(lambda: WARM_UP_NAME not in [layer.name for layer in viewer.layers], timeout=5000)
    viewer.layers.selection.active = points
    before = points.data.copy()
    assert not w.hbond_turns.value and not w.refine_settings().hbond_turns
    w.hbond_turns.value = True
    assert w.refine_settings().hbond_turns
    w.refine(replace(FAST, steps=12))
    assert w.refine_button.text == "Cancel refine" and w.running
    residual = viewer.layers["refine residual (tiny stack)"]
    qtbot.waitUntil(lambda: not w.running, timeout=120_000)
    assert w.refine_button.text == "Refine" and w.predict_button.text == "Predict"
    assert np.abs(residual.data).max() > 0  # the last residual is shown
    assert "fit" in points.features and points.features["fit"].between(0, 1).all()
    assert len(points.data) == len(before) and not np.allclose(points.data, before)
    moved = np.abs(points.data - before).max()
    assert 0.01 < moved < 1.0
    assert "Refined" in w.info.value and w.undo_refine_button.enabled
    w.undo_refine()
    assert np.allclose(points.data, before) and "fit" not in points.features
    assert not w.undo_refine_button.enabled
