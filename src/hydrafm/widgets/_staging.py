"""Put a layer into the napari viewer in several short event-loop turns instead of one long one.

``viewer.add_layer`` does everything on the main thread at once: new dims sliders (when the
viewer gains an axis), the layer's vispy visual (an image layer makes three vispy nodes: image,
tiled image and volume), its Qt layer controls, the layer-list row, selecting the layer (which
lays out and shows those controls) and, for a visible layer, its first draw; Qt then repaints
the window. Under Xvfb with software OpenGL that is one 120-240 ms stall.

:func:`add_layer_in_turns` does the same work in turns ~30 ms apart, each followed by its own
repaint: the sliders (in an empty viewer); the controls and the visual, built before the layer joins the list (napari
picks them up when it inserts the layer, through :func:`install`); the insertion itself, without
selecting; the selection; making the layer visible. The end state is what ``add_layer`` gives:
the layer in the list, selected, visible, with napari's own controls and visual.

:func:`install` wraps napari's two factories (``create_vispy_layer`` as the Qt viewer calls it,
``create_qt_layer_controls``) so that they hand out an object built in advance for that very
layer, and otherwise behave as before; it is applied once and only by the widgets. If napari's
internals differ, nothing is pre-built and the layer is still inserted in turns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["add_layer_in_turns", "install"]

#: id(layer) → (layer, object built for it) waiting for napari to ask for it
_VISUALS: dict[int, tuple[Any, Any]] = {}
_CONTROLS: dict[int, tuple[Any, Any]] = {}
_ORIGINAL: dict[str, Callable] = {}
GAP_MS = 30


def install() -> bool:
    """Let napari use visuals and controls built in advance (idempotent); False if napari has changed."""
    if _ORIGINAL:
        return True
    try:
        from napari._qt import qt_viewer
        from napari._qt.layer_controls import qt_layer_controls_container as controls
    except ImportError:  # pragma: no cover - napari without Qt
        return False
    make_visual = getattr(qt_viewer, "create_vispy_layer", None)
    make_controls = getattr(controls, "create_qt_layer_controls", None)
    if make_visual is None or make_controls is None:
        return False

    def create_vispy_layer(layer: Any, *args: Any, **kwargs: Any) -> Any:
        built = _VISUALS.pop(id(layer), None)
        if built is not None and built[0] is layer:
            return built[1]
        return make_visual(layer, *args, **kwargs)

    def create_qt_layer_controls(layer: Any) -> Any:
        built = _CONTROLS.pop(id(layer), None)
        if built is not None and built[0] is layer:
            return built[1]
        return make_controls(layer)

    for new, old in ((create_vispy_layer, make_visual), (create_qt_layer_controls, make_controls)):
        new.__doc__ = old.__doc__
        new._hydrafm_staged = True  # type: ignore[attr-defined]
    _ORIGINAL.update(visual=make_visual, controls=make_controls)
    qt_viewer.create_vispy_layer = create_vispy_layer
    controls.create_qt_layer_controls = create_qt_layer_controls
    return True


def _qt_viewer(viewer: Any) -> Any:
    window = getattr(viewer, "window", None)
    return getattr(window, "_qt_viewer", None)


def _discard(layer: Any) -> None:
    """Drop what was built for a layer napari did not insert (or built its own for)."""
    visual = _VISUALS.pop(id(layer), None)
    if visual is not None and visual[0] is layer:
        try:
            visual[1].close()
        except Exception:  # noqa: BLE001, S110 - only tidying up
            pass
    controls = _CONTROLS.pop(id(layer), None)
    if controls is not None and controls[0] is layer:
        try:
            controls[1].close()
            controls[1].deleteLater()
        except Exception:  # noqa: BLE001, S110 - only tidying up
            pass


def add_layer_in_turns(viewer: Any, layer: Any, *, visible: bool = True, select: bool = True,
                       done: Callable[[], Any] | None = None, failed: Callable[[BaseException], Any] | None = None,
                       gap_ms: int = GAP_MS) -> None:
    """Add ``layer`` (built anywhere; not yet in a viewer) to ``viewer`` over several event-loop turns.

    The first turn runs now. Ends with the layer selected (``select``) and ``visible``, then calls
    ``done()``. If the layer cannot be inserted, ``failed(exc)`` (or the exception propagates
    from the turn that raised it, to Qt's handler). If the viewer closes meanwhile, the remaining
    turns do nothing.
    """
    from qtpy.QtCore import QTimer

    staged = install()
    layer.visible = False  # inserted hidden: its first draw comes with the last turn
    qtv = _qt_viewer(viewer)

    def grow_dims() -> None:
        # New sliders are the costliest part of a first 3D layer; napari sets the same ndim on insertion.
        # Only in an empty viewer: with layers of fewer axes, napari cannot fit the view to the new ndim.
        if not len(viewer.layers) and viewer.dims.ndim < layer.ndim:
            viewer.dims.ndim = layer.ndim

    def build_controls() -> None:
        if staged and qtv is not None and id(layer) not in _CONTROLS:
            controls = _ORIGINAL["controls"](layer)
            _CONTROLS[id(layer)] = (layer, controls)
            # the container adds them to its stack on insertion; taking them in (styling every child) is the
            # costly part of that, so they join the container now, hidden
            controls.setParent(qtv.controls)
            controls.hide()

    def build_visual() -> None:
        if staged and qtv is not None and id(layer) not in _VISUALS:
            _VISUALS[id(layer)] = (layer, _ORIGINAL["visual"](layer, font_info=qtv.canvas.font_info()))

    def insert() -> None:
        layers = viewer.layers
        activate = getattr(layers, "_activate_on_insert", None)
        try:
            if activate is not None:
                layers._activate_on_insert = False  # selecting (showing its controls) is a turn of its own
            viewer.add_layer(layer)
        finally:
            if activate is not None:
                layers._activate_on_insert = activate
            _discard(layer)  # anything napari did not take

    def choose() -> None:
        if select and layer in viewer.layers:
            viewer.layers.selection.active = layer

    def show() -> None:
        if layer in viewer.layers:
            layer.visible = visible

    steps: list[tuple[Callable[[], None], bool]] = [  # (step, optional: a failure is skipped)
        (grow_dims, True), (build_controls, True), (build_visual, True), (insert, False), (choose, False),
        (show, False)]

    def run(k: int) -> None:
        step, optional = steps[k]
        try:
            step()
        except Exception as exc:
            if not optional:  # (an optional step that fails just builds nothing in advance)
                _discard(layer)
                if isinstance(exc, RuntimeError) and "deleted" in str(exc):
                    return  # a Qt object is gone: the viewer or the widget was closed
                if failed is None:
                    raise
                failed(exc)
                return
        if k + 1 < len(steps):
            QTimer.singleShot(gap_ms, lambda: run(k + 1))
        elif done is not None:
            done()

    run(0)
