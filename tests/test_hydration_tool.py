"""The hydration tool: teacher examples, the periodic density network, hydrafm hydrate and the widget."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hydrafm.hydration.density import DensityModelInfo, predict_density, save_density_model, slab_grid
from hydrafm.hydration.model import DensityConfig, DensityUNet
from hydrafm.hydration.surfaces import SURFACES, SurfaceError, build_surface
from hydrafm.hydration.teacher import fold_repeats, load_example
from hydrafm.hydration.train import profile_peaks, score, train_density

TINY = DensityConfig(base_channels=4, levels=3, gate=True)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny-density.pt"
    return save_density_model(path, DensityUNet(TINY), DensityModelInfo(config=TINY))


def _md_file(tmp_path, surface="calcite-104", vacancies=0, size=(10.0, 10.0), noise=0.0, split="train"):
    """An MD-style density file whose density is a known function: two layers at 2.1 and 3.3 Å plus bulk."""
    slab = build_surface(surface, size, 2, vacuum=25.0, vacancies=vacancies, seed=1)
    lx, ly = slab.cell[0, 0], slab.cell[1, 1]
    nx, ny, nz = round(lx / 0.2), round(ly / 0.2), 100
    z = -1.0 + 0.1 + 0.2 * np.arange(nz)
    prof = 0.0334 * (1 / (1 + np.exp(-(z - 4) * 3)) + 2.5 * np.exp(-(z - 2.1) ** 2 / 0.05)
                     + 1.5 * np.exp(-(z - 3.3) ** 2 / 0.08))
    x = (np.arange(nx) + 0.5) * lx / nx
    # periodic with half the surface cell: invariant under the repeats and calcite (10-14)'s glide plane
    lateral = 1 + 0.3 * np.cos(4 * np.pi * x / (lx / slab.info["repeats"][0]))
    rho = lateral[:, None, None] * np.ones(ny)[None, :, None] * prof[None, None, :]
    rho = rho + noise * np.random.default_rng(0).standard_normal(rho.shape) * (rho > 0.001)
    path = tmp_path / f"{surface}_v{vacancies}_s1_density.npz"
    np.savez_compressed(path, density=rho.astype(np.float16), spacing=(lx / nx, ly / ny, 0.2),
                        origin=(lx / nx / 2, ly / ny / 2, -0.9), frames=10, ps=1.0, surface=surface,
                        vacancies=vacancies, seed=1, size=np.asarray(size), layers=2, split=split)
    return path, prof, z


def test_teacher_examples_resample_and_fold(tmp_path):
    path, prof, z_md = _md_file(tmp_path, noise=0.01)
    ex = load_example(path, fold=False)
    folded = load_example(path, fold=True)
    g = ex.grid
    assert ex.channels.shape == (3, *g.shape) and ex.density.shape == g.shape
    assert g.shape[0] % 8 == 0 and g.shape[1] % 8 == 0
    z = g.z()
    assert np.all(ex.density[:, :, z < -1.2] == 0)  # below the MD grid: no water, not NaN
    (tmp_path / "clean").mkdir()
    clean = load_example(_md_file(tmp_path / "clean", noise=0.0)[0], fold=False)
    want = np.interp(z, z_md, prof)
    got = np.nanmean(clean.density, axis=(0, 1)) / np.mean(1 + 0.3 * np.cos(np.linspace(0, 2 * np.pi, 9)[:-1]))
    inside = (z > -0.8) & (z < 15)
    assert np.allclose(got[inside], want[inside], atol=2e-3)
    # folding over the repeated surface cells keeps the periodic signal and cuts the noise
    signal = clean.density
    assert np.abs(folded.density - signal)[:, :, inside].mean() < 0.6 * np.abs(ex.density - signal)[:, :, inside].mean()
    assert fold_repeats(signal, (1, 1)) is signal
    clean_folded = load_example(_md_file(tmp_path / "clean", noise=0.0)[0], fold=True).density
    assert np.nanmin(clean_folded) >= 0  # no Fourier ringing
    np.testing.assert_allclose(clean_folded, signal, atol=0.05 * np.nanmax(signal))  # symmetric: folds onto itself
    assert profile_peaks(z, np.nanmean(signal, axis=(0, 1))) == pytest.approx([2.1, 3.3], abs=0.06)
    bad = tmp_path / "bad_density.npz"
    bad.write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad_density.npz"):
        load_example(bad)


def test_periodic_network_is_translation_equivariant_and_checks_slabs(tiny_model):
    slab = build_surface("calcite-104", (10, 10), 2, vacuum=25.0)
    grid = slab_grid(slab)
    dens = predict_density(slab, tiny_model)
    assert dens.density.shape == grid.shape and np.all(dens.density >= 0)
    shifted = slab.copy()
    k = 8  # whole voxels: the density must roll with the atoms, with no seam at the cell edge
    shifted.positions[:, 0] += k * grid.spacing[0]
    shifted.wrap()
    moved = predict_density(shifted, tiny_model)
    np.testing.assert_allclose(moved.density, np.roll(dens.density, k, axis=0), atol=2e-5)
    water = slab[slab.numbers == 8]
    with pytest.raises(SurfaceError, match="no Ca, C"):
        predict_density(water, tiny_model)
    with pytest.raises(ValueError, match="no density model named"):
        predict_density(slab, "no-such-model")


def test_training_learns_the_layers(tmp_path):
    path, _, _ = _md_file(tmp_path, size=(8.0, 4.0))  # one 8.1 × 5.0 Å surface cell: quick steps
    ex = load_example(path, DensityModelInfo(config=TINY))
    torch.set_num_threads(1)
    from hydrafm.progress import drive

    net = drive(train_density([ex], TINY, steps=100, lr=5e-3), show=False)
    s = score(net, ex)
    assert s["mae"] < 0.8 * s["mae_bulk_mean_predictor"]  # better than guessing the mean density
    assert len(s["peaks_md"]) == 2


def test_cli_hydrate_writes_a_cube_in_the_slab_coordinates(tmp_path, tiny_model, capsys):
    from ase.io import write
    from ase.io.cube import read_cube_data

    from hydrafm.cli import main

    out = tmp_path / "calcite.cube"
    assert main(["hydrate", "calcite-104", "-o", str(out), "--model", str(tiny_model), "--size", "10", "10",
                 "--layers", "2", "--vacancies", "1"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    data, atoms = read_cube_data(str(out))
    assert list(data.shape) == line["grid"] and data.min() >= 0
    assert main(["hydrate", "calcite-104", "-o", str(out), "--model", str(tiny_model)]) == 2  # no overwrite
    assert "exists" in capsys.readouterr().err
    # a user slab file keeps its own coordinates in the cube
    slab = build_surface("aragonite-001", (10, 10), 2, vacuum=25.0)
    slab.positions[:, 2] += 7.5
    write(tmp_path / "slab.extxyz", slab)
    out2 = tmp_path / "user.cube"
    assert main(["hydrate", str(tmp_path / "slab.extxyz"), "-o", str(out2), "--model", str(tiny_model)]) == 0
    _, atoms2 = read_cube_data(str(out2))
    assert atoms2.positions[:, 2].max() == pytest.approx(slab.positions[:, 2].max(), abs=1e-4)
    for name in SURFACES:  # every built-in surface
        assert main(["hydrate", name, "-o", str(tmp_path / f"{name}.cube"), "--model", str(tiny_model),
                     "--size", "10", "10", "--layers", "1"]) == 0
        assert read_cube_data(str(tmp_path / f"{name}.cube"))[0].shape[2] == 96
    assert main(["hydrate", "dolomite-104", "-o", str(tmp_path / "x.cube")]) == 2
    assert "built-in surface" in capsys.readouterr().err


def _excluded_max(slab, model) -> float:
    from hydrafm.hydration.teacher import excluded_region

    dens = predict_density(slab, model)
    region = excluded_region(slab, slab_grid(slab))
    assert region.any()
    return float(dens.density[region].max())


def test_hard_zeros_inside_the_slab_on_every_surface_and_user_files(tmp_path, tiny_model):
    """The gate is part of the network: zero where the MD has none, whatever the weights."""
    from ase.io import write

    from hydrafm.hydration.surfaces import load_surface

    for name in SURFACES:
        assert _excluded_max(build_surface(name, (10, 10), 2, vacuum=25.0, vacancies=1, seed=2), tiny_model) == 0
    slab = build_surface("calcite-104", (12, 12), 3, vacuum=25.0)
    slab.positions[:, 2] += 4.0
    write(tmp_path / "user.extxyz", slab)
    assert _excluded_max(load_surface(tmp_path / "user.extxyz"), tiny_model) == 0


@pytest.mark.parametrize("name", ["hydration-calcite", "hydration-calcite-attention"])
def test_shipped_model_has_hard_zeros_where_the_md_has_none(name, tmp_path):
    """Every shipped model: ≤ 1e-4 Å⁻³ inside the slab (and in the gap above it) on every surface and a user file."""
    from ase.io import write

    from hydrafm.hydration.density import SHIPPED_DENSITY_MODELS, iter_predict_density, load_density_model
    from hydrafm.hydration.surfaces import load_surface
    from hydrafm.progress import drive

    assert set(SHIPPED_DENSITY_MODELS) == {"hydration-calcite", "hydration-calcite-attention"}  # all covered here
    model = load_density_model(name)
    assert model[1].config.gate, f"{name} has no exclusion gate"
    for surface in SURFACES:
        assert _excluded_max(build_surface(surface, (18, 18), 3, vacuum=25.0), model) <= 1e-4, surface
        assert _excluded_max(build_surface(surface, (18, 18), 3, vacuum=25.0, vacancies=1, seed=3), model) <= 1e-4
    slab = build_surface("calcite-104", (12, 12), 3, vacuum=25.0)
    slab.positions[:, 2] += 4.0  # a user file in its own coordinates: load_surface puts the top Ca plane at 0
    write(tmp_path / "user.extxyz", slab)
    assert _excluded_max(load_surface(tmp_path / "user.extxyz"), model) <= 1e-4
    if model[1].config.attention:  # the widget's *Show attention maps*: one map per gate, on the density's grid
        dens = drive(iter_predict_density(load_surface(tmp_path / "user.extxyz"), model, attention=True), show=False)
        assert len(dens.attention) == model[1].config.levels
        assert all(a.shape == dens.density.shape and 0 <= a.min() and a.max() <= 1 for a in dens.attention)


def test_training_resumes_from_its_checkpoint(tmp_path):
    from hydrafm.hydration.train import _profile_mse
    from hydrafm.progress import drive

    y = torch.tensor([[[[1.0, 2.0]], [[float("nan"), 4.0]]]])  # (1, x 2, y 1, z 2)
    ok = ~torch.isnan(y)
    assert float(_profile_mse(torch.zeros_like(y), y, ok)) == pytest.approx((1.0 + 9.0) / 2)

    ex = load_example(_md_file(tmp_path, size=(8.0, 4.0))[0], DensityModelInfo(config=TINY))
    torch.set_num_threads(1)
    straight = drive(train_density([ex], TINY, steps=4, seed=3, profile_weight=10.0), show=False)
    state = tmp_path / "state.pt"
    stopped = train_density([ex], TINY, steps=4, seed=3, checkpoint=state, save_every=2, profile_weight=10.0)
    for rec in stopped:  # stop after the checkpoint at step 2
        if getattr(rec, "done", 0) == 2:
            break
    resumed = drive(train_density([ex], TINY, steps=4, seed=3, checkpoint=state, save_every=2, profile_weight=10.0),
                    show=False)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------- widget (Xvfb)
@pytest.fixture
def hydration_widget(make_napari_viewer, tiny_model):
    from hydrafm.widgets.hydration import HydrationWidget

    viewer = make_napari_viewer()
    w = HydrationWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.model_file.value = tiny_model
    w.size.value = 10
    w.layers_n.value = 2
    return w


def _run(qtbot, w):
    w.predict()
    qtbot.waitUntil(lambda: not w.running, timeout=60_000)


def test_widget_predicts_shows_and_exports(hydration_widget, qtbot, tmp_path, monkeypatch):
    from hydrafm.widgets import hydration as mod

    w = hydration_widget
    viewer = w._viewer
    w.surface.value = "calcite-104"
    w.vacancies.value = 1
    _run(qtbot, w)
    names = [lay.name for lay in viewer.layers]
    assert "water density (calcite-104 v1 s0)" in names and "slab (calcite-104 v1 s0)" in names
    dens = viewer.layers["water density (calcite-104 v1 s0)"]
    assert dens.rendering == "iso" and dens.data.ndim == 3
    w.isovalue.value = 1.0
    assert dens.iso_threshold == pytest.approx(0.0334)
    # the 3D view: looking down at the surface (the view direction has a downward z component), atoms as spheres
    assert viewer.dims.ndisplay == 3 and viewer.camera.view_direction[0] < -0.3
    assert viewer.layers["slab (calcite-104 v1 s0)"].shading == "spherical"
    w.isovalues.value = f"{0.5 * dens.data.max() / 0.0334:.3f}"
    (surface,) = w.add_isosurfaces()
    heights = surface.data[2]  # coloured by height above the top Ca plane
    z0, dz = dens.translate[0], dens.scale[0]
    assert np.allclose(heights, z0 + surface.data[0][:, 0] * dz, atol=1e-4) and surface.colormap.name == "turbo"
    # the height slider moves the xy slice plane and the marker on the rho(z) plot; a click on the plot moves it
    plane = viewer.layers["xy slice (calcite-104 v1 s0)"]
    w.slice_height.value = 3.0
    assert plane.plane.position[0] == pytest.approx((3.0 - z0) / dz, abs=1e-6)
    assert list(w.plot.marker.get_xdata()) == [3.0, 3.0]
    w._on_plot_click(5.0)
    assert w.slice_height.value == pytest.approx(5.0) and list(w.plot.marker.get_xdata()) == [5.0, 5.0]
    w.isovalues.value = "1000"
    assert w.add_isosurfaces() == [] and "outside" in w.info.value
    w.add_peak_slices()
    assert w.plot.ax.lines  # ρ(z) plotted
    # export, then refuse to overwrite unless confirmed
    target = tmp_path / "d.cube"
    assert w.export_cube(target) == target and target.exists()
    before = target.read_bytes()
    monkeypatch.setattr(mod, "confirm", lambda *a: False)
    assert w.export_cube(target) is None and target.read_bytes() == before
    monkeypatch.setattr(mod, "confirm", lambda *a: True)
    assert w.export_cube(target) == target


def test_widget_takes_files_and_edited_layers_and_reports_errors(hydration_widget, qtbot, tmp_path):
    from ase.io import write

    w = hydration_widget
    viewer = w._viewer
    slab = build_surface("vaterite-010", (10, 10), 1, vacuum=25.0)
    write(tmp_path / "vaterite.extxyz", slab)
    w.surface.value = "structure file…"
    w.file.value = tmp_path / "vaterite.extxyz"
    _run(qtbot, w)
    assert "water density (vaterite)" in [lay.name for lay in viewer.layers]
    # delete two atoms in the slab layer and predict from it
    pts = viewer.layers["slab (vaterite)"]
    n = len(pts.data)
    pts.selected_data = {0, 1}
    pts.remove_selected()
    w.surface.value = "atoms layer…"
    w.layer.reset_choices()
    w.layer.value = pts
    _run(qtbot, w)
    assert len(viewer.layers["slab (slab (vaterite))"].data) == n - 2
    # bad input: an unreadable file → message, widget usable
    (tmp_path / "junk.cif").write_text("not a cif")
    w.surface.value = "structure file…"
    w.file.value = tmp_path / "junk.cif"
    _run(qtbot, w)
    assert "junk.cif" in w.info.value and w.predict_button.enabled


def test_voxel_noise_estimates_the_error_of_a_counted_density(tmp_path):
    from hydrafm.hydration.teacher import snapshots, voxel_noise

    rng = np.random.default_rng(0)
    truth = np.full((30, 30, 40), 0.0334)
    frames, vol = 400, 0.008
    counts = rng.poisson(truth * vol, size=(frames, *truth.shape)).astype(float)  # one count field per frame
    first = counts[: frames // 2].mean(0) / vol
    full = counts.mean(0) / vol
    keep = np.ones(40, bool)
    assert voxel_noise(first, full, 0.5, keep) == pytest.approx(np.sqrt(np.mean((full - truth) ** 2)), rel=0.05)
    quarter = counts[: frames // 4].mean(0) / vol
    assert voxel_noise(quarter, full, 0.25, keep) == pytest.approx(np.sqrt(np.mean((full - truth) ** 2)), rel=0.05)
    for ps in (4, 8, 16):
        np.savez(tmp_path / f"run_density_{ps}ps.npz", density=np.zeros(1))
    (tmp_path / "run_density_xps.npz").write_bytes(b"")
    assert list(snapshots(tmp_path, "run")) == [4.0, 8.0, 16.0]
