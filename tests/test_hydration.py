"""CaCO3 surfaces and the voxel channels of the hydration tool."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from hydrafm.hydration.surfaces import SURFACES, SurfaceError, build_surface, carbonate_groups, load_surface
from hydrafm.hydration.voxels import merge_windows, slab_channels, tile_windows

CHARGE = {20: 2.0, 6: 1.123285, 8: -1.041095}


@pytest.mark.parametrize("name", SURFACES)
def test_builtin_surfaces_are_whole_neutral_nonpolar_and_orthogonal(name):
    slab = build_surface(name, size=(20, 20), n_layers=2)
    cell = slab.cell.array
    assert np.allclose(cell - np.diag(np.diag(cell)), 0)
    assert cell[0, 0] >= 20 and cell[1, 1] >= 20
    n = {z: int((slab.numbers == z).sum()) for z in (20, 6, 8)}
    assert n[20] == n[6] and n[8] == 3 * n[6]
    for g in carbonate_groups(slab):  # every carbonate whole, not cut by the cell
        assert np.linalg.norm(slab.positions[g[1:]] - slab.positions[g[0]], axis=1).max() < 1.35
    q = np.array([CHARGE[z] for z in slab.numbers])
    assert abs(q.sum()) < 1e-6 and abs(np.sum(q * slab.positions[:, 2])) < 1e-3  # no dipole along z
    ca = slab.positions[slab.numbers == 20, 2]
    assert abs(ca.max()) < 0.1  # z = 0 at the top Ca plane
    assert slab.cell[2, 2] - np.ptp(slab.positions[:, 2]) >= 30  # vacuum for the water


def test_calcite_104_matches_the_reference_cut():
    slab = build_surface("calcite-104", size=(24, 24), n_layers=4)
    top = slab.positions[:, 2] > -1.0
    top_ca = int(((slab.numbers == 20) & top).sum())
    assert slab.cell[0, 0] * slab.cell[1, 1] / top_ca == pytest.approx(20.2, abs=0.05)
    assert slab.positions[slab.numbers == 8, 2].max() == pytest.approx(0.78, abs=0.02)
    ca_planes = np.unique(np.round(slab.positions[slab.numbers == 20, 2], 2))
    assert len(ca_planes) == 4 and np.allclose(np.diff(ca_planes), 3.035, atol=0.02)


def test_vacancies_remove_neutral_pairs_from_the_top_layer():
    slab = build_surface("calcite-104", size=(20, 20), n_layers=3)
    holes = build_surface("calcite-104", size=(20, 20), n_layers=3, vacancies=3, seed=1)
    removed = {z: int((slab.numbers == z).sum() - (holes.numbers == z).sum()) for z in (20, 6, 8)}
    assert removed == {20: 3, 6: 3, 8: 9}
    assert sum(CHARGE[z] for z in holes.numbers) == pytest.approx(0, abs=1e-6)
    missing_z = np.setdiff1d(np.round(slab.positions[slab.numbers == 20, 2], 3),
                             np.round(holes.positions[holes.numbers == 20, 2], 3))
    assert len(missing_z) == 0 or missing_z.min() > -1  # only top-layer Ca went
    with pytest.raises(SurfaceError, match="vacancies|cannot make"):
        build_surface("calcite-104", size=(8, 5), n_layers=1, vacancies=50)


def test_user_slabs_are_checked(tmp_path):
    from ase.io import write

    good = build_surface("calcite-104", size=(16, 16), n_layers=2)
    write(tmp_path / "slab.extxyz", good)
    loaded = load_surface(tmp_path / "slab.extxyz")
    assert len(loaded) == len(good) and abs(loaded.positions[loaded.numbers == 20, 2].max()) < 0.1
    write(tmp_path / "water.xyz", Atoms("OH2", positions=[[0, 0, 0], [1, 0, 0], [0, 1, 0]], cell=[10, 10, 30]))
    with pytest.raises(SurfaceError, match="no Ca, C"):
        load_surface(tmp_path / "water.xyz")
    oblique = good.copy()
    oblique.set_cell([[16.2, 0, 0], [3, 15, 0], [0, 0, good.cell[2, 2]]])
    write(tmp_path / "oblique.extxyz", oblique)
    with pytest.raises(SurfaceError, match="not orthogonal"):
        load_surface(tmp_path / "oblique.extxyz")
    tight = good.copy()
    tight.cell[2, 2] = np.ptp(good.positions[:, 2]) + 2
    write(tmp_path / "tight.extxyz", tight)
    with pytest.raises(SurfaceError, match="vacuum"):
        load_surface(tmp_path / "tight.extxyz")
    with pytest.raises(SurfaceError, match="unknown surface"):
        build_surface("dolomite-104")
    (tmp_path / "empty.cif").write_text("")
    with pytest.raises(SurfaceError, match=r"empty\.cif: the file is empty"):
        load_surface(tmp_path / "empty.cif")
    (tmp_path / "blank.cif").write_text("\n\n")
    with pytest.raises(SurfaceError, match=r"blank\.cif: no structure found"):
        load_surface(tmp_path / "blank.cif")
    (tmp_path / "slab.weird").write_text("Ca 0 0 0\n")
    with pytest.raises(SurfaceError, match=r"slab\.weird: not a structure format"):
        load_surface(tmp_path / "slab.weird")
    with pytest.raises(SurfaceError, match="file not found"):
        load_surface(tmp_path / "missing.cif")


def test_channels_count_atoms_and_windows_tile_back():
    slab = build_surface("calcite-104", size=(10, 10), n_layers=2)
    ch, grid = slab_channels(slab, spacing=0.2, z_min=-8.0, height=12.0)
    vol = np.prod(grid.spacing)
    counts = ch.sum(axis=(1, 2, 3)) * vol
    np.testing.assert_allclose(counts, [(slab.numbers == 6).sum(), (slab.numbers == 8).sum(),
                                        (slab.numbers == 20).sum()], rtol=0.01)
    corners = tile_windows(grid.shape[:2], 50, 25)
    wins = [np.roll(ch[2], (-x, -y), axis=(0, 1))[:50, :50] for x, y in corners]
    np.testing.assert_allclose(merge_windows(wins, corners, grid.shape), ch[2], atol=1e-6)


def test_md_teacher_runs_checkpoints_and_resumes(tmp_path):
    pytest.importorskip("openmm")
    from hydrafm.hydration.md import HydrationRun, run_hydration_md, water_count
    from hydrafm.progress import drive

    slab = build_surface("calcite-104", size=(20, 20), n_layers=1, vacuum=16)
    assert 150 < water_count(slab, 2.2) < 400
    short = HydrationRun("t", equilibration_ps=0.02, production_ps=0.04, sample_every_ps=0.02,
                         checkpoint_every_ps=0.02, threads=1)
    ckpt = tmp_path / "md.npz"
    first = drive(run_hydration_md(slab, short, ckpt), show=False)
    assert first.frames == 2 and np.isfinite(first.density).all()
    longer = HydrationRun("t", equilibration_ps=0.02, production_ps=0.06, sample_every_ps=0.02,
                          checkpoint_every_ps=0.02, threads=1)
    more = drive(run_hydration_md(slab, longer, ckpt), show=False)  # resumes: one more frame only
    assert more.frames == 3
    z, rho = more.profile()
    assert rho[z < 0.5].max() == 0  # no water inside the surface
    other = HydrationRun("t", temperature=280, equilibration_ps=0.02, production_ps=0.04, threads=1)
    with pytest.raises(ValueError, match="different run"):
        drive(run_hydration_md(slab, other, ckpt), show=False)


@pytest.mark.parametrize("attention", [False, True])
def test_density_unet_shapes_and_learning(attention):
    torch = pytest.importorskip("torch")
    from hydrafm.hydration.model import DensityConfig, DensityUNet

    torch.manual_seed(0)
    net = DensityUNet(DensityConfig(base_channels=4, levels=2, attention=attention))
    x = torch.rand(2, 3, 16, 16, 24)
    y = net(x)
    assert y.shape == (2, 16, 16, 24) and bool((y >= 0).all())
    assert len(net.attention_maps()) == (2 if attention else 0)
    # it can fit a density that follows the input's Ca channel (a learnable map)
    target = 0.033 * (1 + x[:, 2])
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    first = None
    for _ in range(120):
        loss = (net(x) - target).abs().mean()
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first


def test_distances_are_exact_and_periodic():
    from scipy.spatial import cKDTree

    from hydrafm.hydration.density import slab_grid
    from hydrafm.hydration.voxels import slab_distances

    for name, size in (("calcite-104", (16, 16)), ("calcite-104", (8, 4))):  # one surface cell: images matter
        slab = build_surface(name, size, 2, vacuum=25.0)
        grid = slab_grid(slab)
        d = slab_distances(slab, grid, cap=3.0)
        cell = np.array([slab.cell[0, 0], slab.cell[1, 1], 1e6])
        axes = [grid.origin[k] + grid.spacing[k] * np.arange(grid.shape[k]) for k in range(3)]
        q = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        z = q[:, 2]
        for c, number in enumerate((6, 8, 20)):
            p = slab.positions[slab.numbers == number]
            p = np.column_stack([np.mod(p[:, :2], cell[:2]), p[:, 2] + 100])
            p[:, :2] = np.minimum(p[:, :2], np.nextafter(cell[:2], 0))
            exact = np.minimum(cKDTree(p, boxsize=cell).query(np.column_stack([q[:, :2], z + 100]))[0], 3.0)
            np.testing.assert_allclose(d[c].ravel(), exact, atol=1e-4)


def test_lateral_symmetries_are_exact_and_fold_the_slab_onto_itself():
    from hydrafm.hydration.density import slab_input
    from hydrafm.hydration.surfaces import LateralSymmetry, lateral_symmetries
    from hydrafm.hydration.teacher import fold_symmetries

    counts = {}
    for name in SURFACES:
        slab = build_surface(name, (18, 18), 2, vacuum=25.0)
        ops = lateral_symmetries(slab)
        counts[name] = len(ops)
        assert ops[0] == LateralSymmetry(1, 1, 0.0, 0.0)
        rx, ry = slab.info["repeats"]
        assert len(ops) % (rx * ry) == 0 and len(ops) >= 2 * rx * ry  # a glide or mirror on top of the repeats
        x, _ = slab_input(slab)
        cell = (slab.cell[0, 0], slab.cell[1, 1])
        if name != "vaterite-010":  # whole-voxel operations on these grids: the input folds onto itself exactly
            np.testing.assert_allclose(fold_symmetries(x[2], ops, cell), x[2], atol=1e-5 * x[2].max())
        wrong = [ops[0], LateralSymmetry(-1, -1, 0.3, 0.0)]
        assert np.abs(fold_symmetries(x[2], wrong, cell) - x[2]).max() > 0.1 * x[2].max()
    assert counts["calcite-104"] == 24  # 12 surface cells × the (10-14) glide plane
    holes = build_surface("calcite-104", (18, 18), 2, vacuum=25.0, vacancies=2, seed=7)
    assert lateral_symmetries(holes) == [LateralSymmetry(1, 1, 0.0, 0.0)]


def test_exclusion_gate_makes_hard_zeros():
    torch = pytest.importorskip("torch")
    from hydrafm.hydration.model import GATE_CAP, DensityConfig, DensityUNet

    torch.manual_seed(0)
    net = DensityUNet(DensityConfig(base_channels=4, levels=2, gate=True))
    assert net.input_channels == 6
    dens = torch.rand(1, 3, 16, 16, 24)
    dist = torch.full((1, 3, 16, 16, 24), GATE_CAP)
    dist[:, 1, 8, 8, 10] = 0.5  # one O atom's voxel: closed there and in its whole column below
    dist[:, 2, 3, 3, 5] = 2.2  # within the Ca width: partly open
    y = net(torch.cat([dens, dist], 1))
    assert torch.all(y[0, 8, 8, :11] == 0) and torch.all(y[0, 8, 8, 11:] > 0)
    assert 0 < float(y[0, 3, 3, 5]) < float(y[0, 3, 3, 6])
    r, w = net.gate.radii_widths()
    assert torch.all(r >= net.gate.min_radii) and torch.all(r + w <= GATE_CAP + 1e-6)
    y.sum().backward()
    assert net.gate.raw_radius.grad is not None
    with pytest.raises(ValueError, match="6 input channels"):
        net(dens)
