"""The napari side: manifest, reader, writer, sample data and the Load widget (under Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from hydrafm._layers import layer_stack  # noqa: E402
from hydrafm.io.xyz import read_xyz  # noqa: E402
from hydrafm.widgets.load_stack import AUTO_CHANNEL, LoadStackWidget  # noqa: E402

pytestmark = pytest.mark.gui


def test_manifest_is_valid():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("hydrafm")
    manifest.validate_imports()
    assert {r.command for r in manifest.contributions.readers} == {"hydrafm.get_reader"}


def test_npe2_validate_command():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "npe2", "validate", "hydrafm"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_sample_data_opens_with_physical_scale(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open_sample("hydrafm", "water_bilayer")
    layer = layers[0]
    assert layer.data.shape == (10, 128, 128)
    np.testing.assert_allclose(layer.scale, [0.1, 25 / 128, 25 / 128])
    assert tuple(layer.axis_labels) == ("height", "y", "x")
    stack = layer_stack(layer.data, layer.metadata)
    np.testing.assert_allclose(stack.heights, np.arange(10) * 0.1)


def test_reader_opens_a_folder_of_sxm(make_napari_viewer, testdata):
    viewer = make_napari_viewer()
    layers = viewer.open(str(testdata / "nanonis_stack_borazine_Cu111"), plugin="hydrafm")
    assert len(layers) == 1 and layers[0].data.shape == (31, 48, 48)
    assert layers[0].metadata["scan_angle_deg"] == -41.0


def test_reader_declines_foreign_files(tmp_path):
    from hydrafm._reader import get_reader

    (tmp_path / "a.dat").write_text("Nanonis spectrum, not Createc")
    assert get_reader(str(tmp_path / "a.dat")) is None
    assert get_reader(str(tmp_path / "missing.sxm")) is None


def test_writer_exports_world_coordinates(tmp_path):
    from hydrafm._writer import write_points_xyz

    data = np.array([[0.0, 1.0, 2.0], [1.0, 3.0, 4.0]])
    attributes = {
        "scale": np.array([2.0, 0.5, 0.5]),
        "translate": np.array([0.0, 10.0, 20.0]),
        "features": {"label": np.array(["O", "H_up"]), "confidence": np.array([0.9, 0.7])},
    }
    out = write_points_xyz(str(tmp_path / "atoms.xyz"), data, attributes)
    atoms = read_xyz(out[0])
    np.testing.assert_allclose(atoms.positions, [[21.0, 10.5, 0.0], [22.0, 11.5, 2.0]])  # (x, y, z) Å
    assert list(atoms.arrays["label"]) == ["O", "H_up"]
    assert atoms.get_chemical_symbols() == ["O", "H"]
    np.testing.assert_allclose(atoms.arrays["confidence"], [0.9, 0.7])


def test_save_points_layer_through_napari(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    layer = viewer.add_points(np.array([[0.0, 5.0, 6.0]]), features={"label": ["Na"], "confidence": [1.0]})
    path = tmp_path / "na.xyz"
    layer.save(str(path), plugin="hydrafm")
    atoms = read_xyz(path)
    assert atoms.get_chemical_symbols() == ["Na"]
    np.testing.assert_allclose(atoms.positions[0], [6.0, 5.0, 0.0])


def _wait_loaded(qtbot, widget):
    qtbot.waitUntil(lambda: widget.load_button.enabled and widget.info.value not in ("", "Loading…"), timeout=20000)


def test_load_widget_loads_files_and_sets_orientation(make_napari_viewer, qtbot, testdata):
    viewer = make_napari_viewer()
    widget = LoadStackWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.files.value = [testdata / "SpmImages_01514_Au111_ncAFM.sxm", testdata / "SpmImages_01516_Au111_ncAFM.sxm"]
    assert "Frequency_Shift" in widget.channel.choices and "Current" in widget.channel.choices
    widget.direction.value = "backward"
    widget.load()
    _wait_loaded(qtbot, widget)
    assert len(viewer.layers) == 1
    layer = viewer.layers[0]
    assert layer.data.shape == (2, 160, 160)
    assert layer.metadata["direction"] == "backward"
    assert tuple(str(o) for o in viewer.camera.orientation2d) == ("up", "right")
    assert "2 height(s)" in widget.info.value
    # a second load never overwrites the first layer
    widget.load()
    _wait_loaded(qtbot, widget)
    assert len(viewer.layers) == 2 and viewer.layers[0].name != viewer.layers[1].name


def test_load_widget_folder_and_channel(make_napari_viewer, qtbot, testdata):
    viewer = make_napari_viewer()
    widget = LoadStackWidget(viewer)
    widget.source.value = "Folder"
    widget.folder.value = testdata / "nanonis_stack_borazine_Cu111"
    widget.channel.value = "Current"
    widget.load()
    _wait_loaded(qtbot, widget)
    assert viewer.layers[0].metadata["channel"] == "Current"
    assert viewer.layers[0].data.shape == (31, 48, 48)


def test_load_widget_bad_file_notifies_and_stays_usable(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    viewer = make_napari_viewer()
    widget = LoadStackWidget(viewer)
    errors: list[str] = []
    monkeypatch.setattr("napari.utils.notifications.show_error", errors.append)
    bad = tmp_path / "broken.sxm"
    bad.write_bytes(b":NANONIS_VERSION:\n2\n:SCANIT_END:\n")
    widget.files.value = [bad]
    assert widget.channel.choices == (AUTO_CHANNEL,)
    widget.load()
    _wait_loaded(qtbot, widget)
    assert len(viewer.layers) == 0
    assert errors and "broken.sxm" in errors[0]
    assert widget.info.value.startswith("Could not load") and widget.load_button.enabled


def test_load_widget_without_selection(make_napari_viewer, monkeypatch):
    viewer = make_napari_viewer()
    widget = LoadStackWidget(viewer)
    errors: list[str] = []
    monkeypatch.setattr("napari.utils.notifications.show_error", errors.append)
    widget.load()
    assert errors and len(viewer.layers) == 0


def test_widget_is_contributed(make_napari_viewer):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("hydrafm", "Load AFM stack")
    assert isinstance(widget, LoadStackWidget)
