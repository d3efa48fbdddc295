"""The Load widget's Watch folder mode, driven for real under Xvfb while files are replayed into a folder."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from synth import replay, write_stack_sxm  # noqa: E402

from hydrafm.io import load_stack  # noqa: E402
from hydrafm.widgets._common import atoms_of_layer, stack_of_layer  # noqa: E402
from hydrafm.widgets.live import WATCH  # noqa: E402
from hydrafm.widgets.load_stack import LoadStackWidget  # noqa: E402

pytestmark = pytest.mark.gui
SLOW = dict(gap=0.02, chunks=3, pause=(0.005, 0.03), long_pause=0.15, p_long=0.3)


@pytest.fixture
def widget(make_napari_viewer, tmp_path, qtbot):
    viewer = make_napari_viewer()
    w = LoadStackWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.source.value = WATCH
    w.folder.value = tmp_path / "live"
    (tmp_path / "live").mkdir()
    w.watch.settle = 0.1
    yield w
    w.watch.stop()
    qtbot.waitUntil(lambda: not w.watch.watching, timeout=10_000)


def _start(w, files: list[Path], seed: int = 0) -> threading.Thread:
    w.watch.start()
    assert w.watch.watching and w.watch.start_button.text == "Stop watching"
    return _replay(w, files, seed)


def _replay(w, files: list[Path], seed: int) -> threading.Thread:
    writer = threading.Thread(target=replay, args=(files, Path(w.folder.value)),
                              kwargs=dict(seed=seed, **SLOW), daemon=True)
    writer.start()
    return writer


def _shown(w, what: str, heights: int) -> bool:
    return any(e[0] == what and e[2] == heights for e in w.watch.log)


def _layers(w, name: str):
    layers = {layer.name: layer for layer in w._viewer.layers}
    return layers[name], layers[f"atoms ({name})"]


def test_watch_mode_ends_with_the_stack_and_atoms_of_the_finished_folder(widget, testdata, qtbot):
    from hydrafm.predict.predictor import predict_atoms

    w = widget
    shown = lambda widget: not widget.native.isHidden()  # noqa: E731 - the viewer window itself is not shown
    assert shown(w.folder) and shown(w.watch) and not shown(w.files) and not shown(w.load_button)
    files = sorted((testdata / "nanonis_stack_borazine_Cu111").glob("*.sxm"))
    w.watch.threshold.value = 0.05
    writer = _start(w, files, seed=2)
    qtbot.waitUntil(lambda: _shown(w, "atoms", len(files)), timeout=90_000)
    writer.join()
    name = files[0].stem
    image, points = _layers(w, name)
    assert len([layer for layer in w._viewer.layers if layer._type_string == "image"]) == 1  # one stack layer
    finished = load_stack(testdata / "nanonis_stack_borazine_Cu111")
    live = stack_of_layer(image)
    np.testing.assert_array_equal(live.data, finished.data)
    np.testing.assert_allclose(live.heights, finished.heights)
    assert live.pixel_size == finished.pixel_size
    expected = predict_atoms(finished, "water", threshold=0.05)
    got = atoms_of_layer(points)
    assert len(expected) > 0
    order = lambda a: np.lexsort(a.positions.T)  # noqa: E731 - the layer draws H after the heavy atoms
    np.testing.assert_allclose(got.positions[order(got)], expected.positions[order(expected)], atol=1e-5)
    assert list(got.arrays["label"][order(got)]) == list(expected.arrays["label"][order(expected)])
    # every frame reached its layer; one image layer grew in place
    assert sorted(e[1] for e in w.watch.log if e[0] == "frame") == [f.name for f in files]
    status = w.watch.status.value
    assert f"{name}: {len(files)} height(s)" in status and f"from {len(files)} heights" in status
    w.watch.stop()
    qtbot.waitUntil(lambda: not w.watch.watching, timeout=10_000)
    assert w.watch.start_button.text == "Start watching"
    assert w.watch.status.value.startswith("Stopped watching")


def test_edits_to_atoms_survive_new_heights(widget, tmp_path, qtbot):
    from hydrafm._sample_data import sample_path

    w = widget
    files = write_stack_sxm(load_stack(sample_path()), tmp_path / "made")
    writer = _start(w, files[:3])
    qtbot.waitUntil(lambda: _shown(w, "atoms", 3), timeout=60_000)
    writer.join()
    image, points = _layers(w, files[0].stem)
    assert len(points.data) > 5
    deleted = atoms_of_layer(points)[0]
    points.selected_data = {0}
    points.remove_selected()
    added = np.array([0.0, image.translate[1] + 3.0, image.translate[2] + 3.0])
    points.add(added[1:])  # the layer is (y, x); an atom added by hand sits at z = 0
    writer = _replay(w, files[3:], seed=5)
    qtbot.waitUntil(lambda: _shown(w, "atoms", len(files)), timeout=60_000)
    writer.join()
    final = atoms_of_layer(points)
    yx = final.positions[:, 1::-1]  # (y, x) like the layer (its z: napari's current feature values)
    assert np.min(np.linalg.norm(yx - added[1:], axis=1)) < 1e-6  # the atom placed by hand is still there
    symbols = np.array(final.get_chemical_symbols())
    near = np.linalg.norm(final.positions - deleted.position, axis=1) < 0.5
    assert not (near & (symbols == deleted.symbol)).any()  # the deleted one stays deleted
    assert w._viewer.layers.index(points) >= 0 and len([lay for lay in w._viewer.layers
                                                       if lay._type_string == "points"]) == 1


def test_start_without_a_folder_says_so(make_napari_viewer):
    w = LoadStackWidget(make_napari_viewer())
    w.source.value = WATCH
    w.watch.start()
    assert not w.watch.watching and "Choose the folder" in w.watch.status.value
