"""Training-data pipeline at tiny scale: structures, pools, labels, AFM simulation, shards."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from hydrafm.cli import main
from hydrafm.simulate.labels import LABELS, atom_labels, label_maps, vdw_sphere_image
from hydrafm.structures.pool import BadStructureError, StructurePool, check_structure
from hydrafm.structures.water_md import _water_geometry, build_wall, WALLS
from hydrafm.structures.water_pool import WindowSpec, cut_windows


def water(o, h_dirs):
    """A water at ``o`` with H atoms along the given unit directions (O–H 1 Å)."""
    o = np.asarray(o, float)
    return [o] + [o + np.asarray(d, float) / np.linalg.norm(d) for d in h_dirs]


# ------------------------------------------------------------------ labels
def test_h_rule_up_flat_down():
    pos = water([5, 5, 1], [[0, 0, 1], [1, 0, 0]]) + water([10, 10, 1], [[1, 0, -1.5], [0, 1, 0.2]])
    labels = atom_labels(np.array(pos), [8, 1, 1, 8, 1, 1])
    assert labels.tolist() == ["O", "H_up", "H_flat", "O", "H_down", "H_flat"]


def test_h_rule_threshold_is_30_degrees():
    up = [np.cos(np.radians(31)), 0, np.sin(np.radians(31))]
    flat = [np.cos(np.radians(29)), 0, np.sin(np.radians(29))]
    labels = atom_labels(np.array(water([0, 0, 0], [up, flat])), [8, 1, 1])
    assert labels.tolist() == ["O", "H_up", "H_flat"]


def test_labels_reject_lonely_h_and_unknown_elements():
    with pytest.raises(ValueError, match="no O within"):
        atom_labels(np.array([[0, 0, 0], [3, 0, 0]]), [8, 1])
    with pytest.raises(ValueError, match="cannot label"):
        atom_labels(np.array([[0, 0, 0]]), [6])


def test_label_maps_put_atoms_at_their_pixels():
    # x → column, y → row, as in AFMStack
    maps = label_maps(np.array([[3.0, 7.0, 0.0], [1.0, 1.0, 0.0]]), ["O", "Na"], (40, 50), 0.2, sigma=0.3)
    assert maps.shape == (len(LABELS), 40, 50)
    assert np.unravel_index(maps[0].argmax(), maps[0].shape) == (35, 15)
    assert np.unravel_index(maps[1].argmax(), maps[1].shape) == (5, 5)
    assert maps[0].max() == pytest.approx(1.0, abs=1e-6)
    assert maps[3:].max() == 0


def test_vdw_spheres_top_atom_wins():
    img = vdw_sphere_image(np.array([[2.0, 2.0, 0.0], [2.0, 2.0, 1.0]]), ["O", "H_up"], (20, 20), 0.2)
    assert np.allclose(img[0, 0], 1.0)  # background is white
    centre = img[10, 10]
    assert centre[1] > centre[0]  # H_up (green) sits on top of O (red)


# ------------------------------------------------------------------- pools
def test_pool_roundtrip_and_no_overwrite(tmp_path):
    items = [(np.array([[1.0, 2.0, 0.5], [1.5, 2.5, 0.5]]), [8, 1], {"surface": 0}),
             (np.array([[10.0, 12.0, 1.0]]), [11], {"surface": 1})]
    pool = StructurePool.from_structures(items, (25, 25, 3), {"made_by": "test"})
    path = pool.save(tmp_path / "p.npz")
    with pytest.raises(FileExistsError):
        pool.save(path)
    back = StructurePool.load(path)
    assert len(back) == 2 and back.attrs["made_by"] == "test"
    atoms = back[1]
    assert atoms.get_chemical_symbols() == ["Na"] and atoms.info["surface"] == 1
    np.testing.assert_allclose(back.arrays(0)[0], items[0][0], atol=0.006)


def test_damaged_pool_names_the_file(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a pool")
    with pytest.raises(ValueError, match="bad.npz"):
        StructurePool.load(bad)


@pytest.mark.parametrize(
    "numbers, positions, match",
    [
        ([6], [[1, 1, 0]], "unknown element"),
        ([8], [[30, 1, 0]], "outside"),
        ([8, 8], [[5, 5, 0], [5.3, 5, 0]], "overlapping"),
    ],
)
def test_bad_structures_get_a_clear_error(numbers, positions, match):
    with pytest.raises(BadStructureError, match=match):
        check_structure(Atoms(numbers=numbers, positions=positions), (25, 25))


# --------------------------------------------------------------- structures
def test_wall_geometry():
    xyz, (lx, ly) = build_wall(WALLS["Pt"], 4, 4, 2)
    assert xyz.shape == (32, 3)
    top = xyz[xyz[:, 2] == 0]
    d = np.linalg.norm(top[:, None] - top[None], axis=2)
    d[d == 0] = np.inf
    assert d.min() == pytest.approx(WALLS["Pt"].lattice_constant / np.sqrt(2), rel=1e-6)


def test_cut_windows_keep_whole_molecules():
    rng = np.random.default_rng(0)
    mol = _water_geometry()
    o = np.column_stack([rng.uniform(0, 40, 300), rng.uniform(0, 40, 300), rng.uniform(2, 8, 300)])
    w = (o[:, None, :] + mol[None]).reshape(-1, 3)
    wins = cut_windows(w, (40.0, 40.0), WindowSpec(), rng)
    assert wins
    for win in wins:
        m = win.reshape(-1, 3, 3)
        assert np.allclose(np.linalg.norm(m[:, 1] - m[:, 0], axis=1), 1.0, atol=1e-6)
        assert (m[:, 0, :2] >= 0).all() and (m[:, 0, :2] < 25).all()
        assert (m[:, 0, 2] >= 0).all() and (m[:, 0, 2] < 3.0).all()


def test_water_md_tiny_run():
    pytest.importorskip("openmm")
    from hydrafm.progress import drive
    from hydrafm.structures.water_md import MDRun, run_water_md

    run = MDRun(wall="Au", n_waters=30, nx=8, ny=8, temperature=250, equilibration_ps=0.02,
                production_ps=0.04, frame_every_ps=0.02, box_height=40.0, threads=1)
    frames = drive(run_water_md(run), show=False)
    assert frames.positions.shape == (2, 90, 3)
    m = frames.positions[-1].reshape(-1, 3, 3)
    assert np.allclose(np.linalg.norm(m[:, 1] - m[:, 0], axis=1), 1.0, atol=1e-3)  # rigid SPC/E
    assert (m[:, 0, 2] > 1.5).all()  # above the wall


def test_hydrate_is_relaxed_and_bound():
    pytest.importorskip("openmm")
    from hydrafm.structures.hydrates import _Relaxer, make_hydrate

    rng = np.random.default_rng(3)
    relaxer = _Relaxer("Na", 4)
    pos = None
    for _ in range(5):
        pos = make_hydrate("Na", 4, rng, relaxer)
        if pos is not None:
            break
    assert pos is not None and pos.shape == (13, 3)
    d = np.linalg.norm(pos[1::3] - pos[0], axis=1)
    assert ((d > 2.1) & (d < 3.0)).sum() >= 3  # first-shell Na–O
    assert np.allclose(pos[0, :2], 0)


def test_shipped_pools_meet_the_size_targets():
    from hydrafm.paths import pool_path

    for kind, target in (("water", 20000), ("hydrates", 2000)):
        path = pool_path(kind)
        if not path.exists():
            pytest.skip(f"{path.name} not made yet")
        pool = StructurePool.load(path)
        assert len(pool) >= target
        assert path.stat().st_size < 20e6


# ---------------------------------------------------------- AFM simulation
def _need_opencl():
    pytest.importorskip("ppafm")
    from hydrafm.simulate.afm import opencl_available

    if not opencl_available():
        pytest.skip("no OpenCL device (apt install pocl-opencl-icd)")


TINY = dict(n_pixels=40, scan_size=10.0, pix_per_angstrom=4)


def test_single_water_image_is_where_the_molecule_is():
    _need_opencl()
    from hydrafm.simulate.afm import AFMSimulator, SampledTip, SimulationSettings

    sim = AFMSimulator(SimulationSettings(**TINY))
    pos = np.array(water([3.0, 7.0, 0.0], [[1, 0, 0.1], [-0.3, 0.95, 0.1]]))
    stack = sim.simulate(pos, [8, 1, 1], SampledTip(2.6))
    assert stack.shape == (10, 40, 40)
    assert stack.heights[1] == pytest.approx(0.1)
    # contrast rises as the tip approaches
    assert stack.data[0].std() > stack.data[-1].std()
    # the molecule is the dark (attractive) feature of the far frame, at x = 3 → col 12, y = 7 → row 28
    row, col = np.unravel_index(stack.data[-1].argmin(), stack.data[-1].shape)
    assert abs(row - 28) <= 3 and abs(col - 12) <= 3
    assert stack.metadata["simulation"]["k_lateral"] == 0.5
    assert stack.metadata["simulation"]["tip_charge"] == -0.05


def _tiny_water_pool() -> StructurePool:
    """A few 10 × 10 Å windows of three waters each."""
    rng = np.random.default_rng(1)
    items = []
    for _ in range(4):
        o = rng.uniform(2, 8, size=(3, 2))
        pos = []
        for x, y in o:
            pos += water([x, y, rng.uniform(0, 1)], [[1, 0, 0.2], [-0.3, 0.9, 0.9]])
        pos = np.array(pos)
        try:
            check_structure(Atoms(numbers=[8, 1, 1] * 3, positions=pos), (10, 10))
        except BadStructureError:
            continue
        items.append((pos, [8, 1, 1] * 3, {}))
    return StructurePool.from_structures(items, (10.0, 10.0, 3.0))


def test_dataset_is_deterministic_resumable_and_loadable(tmp_path):
    _need_opencl()
    from hydrafm.progress import drive
    from hydrafm.simulate.afm import SimulationSettings
    from hydrafm.simulate.dataset import AFMDataset, make_dataset

    pool = _tiny_water_pool()
    settings = SimulationSettings(**TINY)
    out = tmp_path / "ds"
    drive(make_dataset(out, 3, "water", pool, settings, seed=5, shard_size=2), show=False)
    first = np.load(out / "shard_00001.npz")["stacks"].copy()
    (out / "shard_00001.npz").unlink()
    drive(make_dataset(out, 3, "water", pool, settings, seed=5, shard_size=2), show=False)
    np.testing.assert_array_equal(np.load(out / "shard_00001.npz")["stacks"], first)
    with pytest.raises(ValueError, match="different dataset"):
        drive(make_dataset(out, 3, "water", pool, settings, seed=6, shard_size=2), show=False)

    ds = AFMDataset(out)
    assert len(ds) == 3 and ds.complete
    s = ds[2]
    assert s.stack.shape == (10, 40, 40) and s.maps.shape == (len(LABELS), 40, 40)
    assert s.maps[0].max() > 0.9  # the O channel has its atoms
    batches = list(ds.batches(2, np.random.default_rng(0)))
    assert sorted(len(b) for b in batches) == [1, 2]


def test_random_tips_are_drawn_in_their_ranges_recorded_and_simulated_as_drawn(tmp_path, capsys):
    """``--random-tips``: each stack's tip and scan come from TipRanges, the shards record them,
    and each stack is the simulation of exactly its draw (torch engine: no OpenCL needed)."""
    import json

    from hydrafm.simulate.dataset import AFMDataset, TIP_DRAWS
    from hydrafm.simulate.engine import TorchSimulator
    from hydrafm.simulate.settings import SampledTip, TipRanges, scan_settings

    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    pool_file = tmp_path / "pool.npz"
    _tiny_water_pool().save(pool_file)
    out = tmp_path / "rt"
    args = ["simulate", "water", "-n", "6", "--pool", str(pool_file), "--out", str(out), "--pixels", "24",
            "--scan-size", "10", "--pix-per-angstrom", "4", "--seed", "2", "--shard-size", "3",
            "--random-tips"]
    assert main(args + ["--distance", "2.6:3.6"]) == 0
    manifest = json.loads((out / "dataset.json").read_text())
    ranges = TipRanges.from_dict(manifest["tips"])
    assert ranges == TipRanges(distance=(2.6, 3.6))
    ds = AFMDataset(out)
    d = ds.draws()
    assert set(TIP_DRAWS) <= set(d) and len(d["dz"]) == 6
    assert np.all((d["distance"] >= 2.6) & (d["distance"] <= 3.6))
    assert np.all((d["k_lateral"] >= 0.25) & (d["k_lateral"] <= 0.8))
    assert np.all((d["charge"] >= -0.2) & (d["charge"] <= 0.1))
    steps = np.abs(d["dz"][:, None] - np.array([0.08, 0.1, 0.12])).argmin(1)
    np.testing.assert_allclose(d["dz"], np.array([0.08, 0.1, 0.12])[steps], atol=1e-6)
    assert len(set(steps)) > 1
    # the stack is its draw, scanned with its own amplitude and height step
    i = int(np.argmax(np.abs(d["dz"] - 0.1)))
    s = ds[i]
    scan = scan_settings(ds.settings, float(d["amplitude"][i]), float(d["dz"][i]))
    assert scan.dz != ds.settings.dz and np.isclose(scan.df_steps * scan.dz, d["amplitude"][i])
    with np.load(ds.shards[i // 3]) as z:
        tilt = tuple(z["tilt"][i % 3])
    tip = SampledTip(float(d["distance"][i]), tilt, k_lateral=float(d["k_lateral"][i]),
                     charge=float(d["charge"][i]), quadrupole=float(d["quadrupole"][i]))
    again = TorchSimulator(scan).simulate(s.positions, _numbers(s.labels), tip).data
    np.testing.assert_allclose(s.stack, again, atol=0.02 * np.abs(again).max())
    # another draw of tips in the same folder is another dataset
    assert main(args) == 2 and "different dataset" in capsys.readouterr().err


def _numbers(labels: np.ndarray) -> np.ndarray:
    """Atomic numbers of label indices (``LABELS``), by the element each label is."""
    from hydrafm.io.xyz import ELEMENT

    return Atoms([ELEMENT[LABELS[int(i)]] for i in labels]).numbers


def test_cli_simulate_errors_are_one_line(tmp_path, capsys):
    rc = main(["simulate", "water", "-n", "2", "--pool", str(tmp_path / "missing.npz"), "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hydrafm: error:") and "missing.npz" in err and "\n" not in err


def test_cli_pool_refuses_to_overwrite(tmp_path, capsys):
    target = tmp_path / "p.npz"
    target.write_bytes(b"x")
    assert main(["pool", "hydrates", "--out", str(target)]) == 2
    assert "exists" in capsys.readouterr().err


def test_hydrate_pool_resumes_from_its_checkpoint(tmp_path):
    pytest.importorskip("openmm")
    from hydrafm.progress import drive
    from hydrafm.structures.hydrates import make_hydrate_pool

    whole = drive(make_hydrate_pool(None, n=4, seed=2), show=False)
    gen = make_hydrate_pool(None, n=4, seed=2, checkpoint=tmp_path / "part.npz", checkpoint_every=2)
    for rec in gen:  # interrupt after the first checkpoint
        if rec.done >= 2:
            break
    gen.close()
    assert (tmp_path / "part.npz").exists()
    resumed = drive(make_hydrate_pool(None, n=4, seed=2, checkpoint=tmp_path / "part.npz"), show=False)
    assert len(resumed) == 4
    np.testing.assert_allclose(resumed.positions, whole.positions, atol=2)  # int16 0.01 Å steps


def test_water_kind_refuses_a_hydrate_pool():
    from hydrafm.simulate.dataset import draw_structure

    pool = StructurePool.from_structures([(np.zeros((1, 3)), [11], {})], (0.0, 0.0, 8.0))
    with pytest.raises(ValueError, match="hydrates"):
        draw_structure("water", pool, np.random.default_rng(0))
    windows = StructurePool.from_structures([(np.ones((1, 3)), [8], {})], (20.0, 20.0, 3.0))
    with pytest.raises(ValueError, match="20 Å"):
        draw_structure("water", windows, np.random.default_rng(0), window=25.0)


def test_cli_simulate_structure_range_errors(tmp_path, capsys):
    rc = main(["simulate", "hydrates", "-n", "1", "--structures", "5000:6000", "--out", str(tmp_path / "d")])
    assert rc == 2 and "selects no structure" in capsys.readouterr().err
    rc = main(["simulate", "hydrates", "-n", "1", "--structures", "a:b", "--out", str(tmp_path / "d")])
    assert rc == 2 and "bad --structures" in capsys.readouterr().err


def test_top_layer_keeps_whole_molecules_near_the_top():
    from hydrafm.simulate.dataset import top_layer

    pos = np.array(water([5, 5, 3.0], [[1, 0, 0], [0, 1, 0]]) + water([9, 9, 1.0], [[1, 0, 0], [0, 1, 0]])
                   + water([2, 9, 2.2], [[1, 0, 0.5], [0, 1, 0]]))
    p, z = top_layer(pos, [8, 1, 1] * 3, 1.5)
    assert z.tolist() == [8, 1, 1, 8, 1, 1]
    assert sorted(p[z == 8, 2].tolist()) == [2.2, 3.0]
    with pytest.raises(ValueError, match="triplets"):
        top_layer(pos[:2], [8, 1], 1.0)


# ------------------------------------------------------------------ verify by simulation
def test_verify_scores_the_true_structure_above_a_wrong_one_and_drops_overlaps():
    from hydrafm._sample_data import sample_path
    from hydrafm.io import load_stack
    from hydrafm.io.xyz import read_xyz
    from hydrafm.simulate.afm import opencl_available
    from hydrafm.simulate.verify import frame_similarity, verify_atoms

    if not opencl_available():
        pytest.skip("no OpenCL device (apt install pocl-opencl-icd)")
    stack = load_stack(sample_path())
    truth = read_xyz(sample_path("water_bilayer.xyz"))
    good = verify_atoms(stack, truth, distances=(2.3, 2.6))
    assert good.similarity > 0.9 and good.simulated.data.shape == stack.data.shape and good.dropped == 0
    np.testing.assert_allclose(frame_similarity(stack.data, stack.data), 1.0, atol=1e-6)
    doubled = truth + truth[:3]  # three atoms on top of others, as a careless edit would leave them
    v = verify_atoms(stack, doubled, distances=(2.6,))
    assert v.dropped == 3
    shifted = truth.copy()
    shifted.positions[:, :2] += 1.2
    assert verify_atoms(stack, shifted, distances=(2.3, 2.6)).similarity < good.similarity - 0.1
    with pytest.raises(ValueError, match="no atoms"):
        verify_atoms(stack, truth[:0])
