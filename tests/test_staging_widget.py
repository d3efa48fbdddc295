"""Layers inserted over several event-loop turns end as napari's own add_layer leaves them (Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from hydrafm.widgets import _staging  # noqa: E402
from hydrafm.widgets._staging import add_layer_in_turns  # noqa: E402

pytestmark = pytest.mark.gui


def _image(name="stack"):
    from napari.layers import Image

    return Image(np.random.default_rng(0).random((3, 8, 8), dtype=np.float32), name=name, colormap="PiYG",
                 contrast_limits=(0, 1), scale=(2.0, 0.5, 0.5), translate=(0.0, 1.0, 1.0))


def test_the_layer_ends_inserted_selected_and_shown_with_napari_controls_and_visual(make_napari_viewer, qtbot):
    from napari._qt.layer_controls.qt_image_controls import QtImageControls
    from napari._vispy.layers.image import VispyImageLayer

    viewer = make_napari_viewer()
    first = viewer.add_points(np.zeros((1, 2)), name="2D points")  # a 2D viewer: the stack brings an axis
    layer = _image()
    done: list[bool] = []
    add_layer_in_turns(viewer, layer, done=lambda: done.append(True))
    assert layer not in viewer.layers and not layer.visible  # only the first turn has run
    qtbot.waitUntil(lambda: bool(done), timeout=5000)
    assert list(viewer.layers) == [first, layer]
    assert viewer.layers.selection.active is layer and set(viewer.layers.selection) == {layer}
    assert layer.visible and viewer.dims.ndim == 3 and layer.colormap.name == "PiYG"
    np.testing.assert_allclose(layer.scale, (2.0, 0.5, 0.5))
    qtv = viewer.window._qt_viewer
    controls = qtv.controls.widgets[layer]
    assert isinstance(controls, QtImageControls) and qtv.controls.currentWidget() is controls
    assert isinstance(qtv.canvas.layer_to_visual[layer], VispyImageLayer)
    assert qtv.canvas.layer_to_visual[layer].node.visible
    assert not _staging._VISUALS and not _staging._CONTROLS  # napari took what was built for it
    qtbot.wait(50)  # drawn
    viewer.layers.remove(layer)  # and removed as usual
    assert layer not in qtv.controls.widgets and layer not in qtv.canvas.layer_to_visual
    qtbot.wait(50)


def test_unselected_and_hidden_on_request_and_one_after_the_other(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()  # empty: its height slider comes in a turn of its own
    a, b = _image("a"), _image("b")
    done: list[str] = []
    add_layer_in_turns(viewer, a, select=False, visible=False,
                       done=lambda: add_layer_in_turns(viewer, b, done=lambda: done.append("b")))
    qtbot.waitUntil(lambda: bool(done), timeout=5000)
    assert [layer.name for layer in viewer.layers] == ["a", "b"] and viewer.dims.ndim == 3
    assert not a.visible and b.visible and viewer.layers.selection.active is b
    viewer.layers.selection.active = a  # a's controls, built ahead, show when it is selected
    assert viewer.window._qt_viewer.controls.currentWidget() is viewer.window._qt_viewer.controls.widgets[a]


def test_a_layer_that_cannot_be_inserted_is_reported_and_nothing_is_left_behind(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    layer = _image()
    viewer.add_layer(layer)
    errors: list[BaseException] = []
    add_layer_in_turns(viewer, layer, failed=errors.append)  # already there: napari refuses it
    qtbot.waitUntil(lambda: bool(errors), timeout=5000)
    assert len(viewer.layers) == 1
    assert not _staging._VISUALS and not _staging._CONTROLS
