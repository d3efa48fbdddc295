"""The Load widget's *Watch folder* mode: stacks grow layer by layer while they are measured.

The live workflow (:func:`hydrafm.predict.live.watch_and_predict`) runs in a napari
worker thread: it reads each frame file once it is complete, and predicts a stack
again whenever it gains a height (a newer frame cancels a running prediction). The
worker also prepares the layer data; the main thread only puts it into the layers:

* each stack is one image layer, named after its first file, that gains its heights in
  place (the contrast follows the data until you change it);
* its atoms are one Points layer, ``atoms (<stack>)``, updated in place; atoms you
  edited keep your edits where the network did not move them
  (:func:`hydrafm.predict.live.keep_edits`).
"""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSlider, Label, PushButton

from .._layers import ATOMS_KEY, ORIENTATION_2D, atoms_layer_data, stack_layer_data
from ._common import atoms_of_layer, report_error

if TYPE_CHECKING:
    import napari

    from ..predict.live import AtomsPredicted
    from ..io.watch import StackChanged

WATCH = "Watch folder"
ONLY_WATCH = "(do not predict)"
WARM_UP = "hydrafm live warm-up"
_WARM = False  # the image and points renderers have been warmed up in this process


def _watch_job(folder: Path, model: Path | None, device: Any, threshold: float, channel: Any, direction: str,
               settle: float, stop: Callable[[], bool], warm_up: threading.Event | None):
    """Worker body: the live records, each with the layer data the main thread will need.

    A :class:`StackChanged` comes with its image layer's ``(data, kwargs)`` (and, for a new
    stack, the layer itself, built here); the first :class:`AtomsPredicted` of each stack
    with its (hidden) Points layer, built here. With ``warm_up``, first a tiny transparent
    image and points layer for the main thread to show once and remove; watching starts
    when the main thread sets ``warm_up`` (no real layer may arrive before they are gone).
    """
    from napari.layers import Image

    from ..io.watch import StackChanged
    from ..predict.live import AtomsPredicted, watch_and_predict

    if warm_up is not None:
        yield WARM_UP, (_warm_up_layers(), warm_up)
        warm_up.wait(30.0)
    images: set[str] = set()
    points: set[str] = set()
    records = watch_and_predict(folder, model if model is not None else "water", channel=channel,
                                direction=direction, device=device, threshold=threshold,
                                predict=model is not None, settle=settle, stop=stop)
    for rec in records:
        extra: Any = None
        if isinstance(rec, StackChanged):
            data, kwargs, _ = stack_layer_data(rec.stack, rec.name)
            extra = (data, kwargs, None if rec.name in images else Image(data, **kwargs))
            images.add(rec.name)
        elif isinstance(rec, AtomsPredicted) and rec.name not in points:
            points.add(rec.name)
            extra = _atoms_layer(rec)
        yield rec, extra


def _warm_up_layers() -> list[Any]:
    """A transparent image and points layer: the first layers drawn cost a shader compile each."""
    from napari.layers import Image, Points

    from ..io.xyz import points_to_atoms

    data, kwargs, _ = atoms_layer_data(points_to_atoms(np.zeros((1, 3)), {"label": ["O"]}), WARM_UP)
    derived = {"hydrafm_derived": "warm-up"}
    return [Image(np.zeros((2, 4, 4), np.float32), name=WARM_UP, opacity=0.0, metadata=derived,
                  units=("angstrom",) * 3),
            Points(data, **{**kwargs, "opacity": 0.0})]


def _atoms_layer(rec: AtomsPredicted) -> Any:
    """A hidden Points layer ``atoms (<stack>)`` of a prediction (may be built off the main thread)."""
    from napari.layers import Points

    info = rec.atoms.info
    meta = {"model": info.get("model"), "threshold": info.get("threshold"), "stack": rec.name, "live": True,
            "closest_probe": info.get("closest_probe")}
    data, kwargs, _ = atoms_layer_data(rec.atoms, f"atoms ({rec.name})", meta)
    return Points(data, **kwargs, visible=False)


class WatchPanel(Container):
    """Start and stop watching a folder; the status of every stack being watched.

    Parameters
    ----------
    viewer
        The napari viewer the layers go to.
    settings
        Called on *Start watching*: ``(folder, channel, direction)`` from the Load widget.

    Attributes
    ----------
    settle
        Seconds a file must stay unchanged before it is read.
    log
        ``(what, file or stack, heights, time.time())`` of every layer update (``"frame"``
        per file added, ``"atoms"`` per prediction shown), for benchmarks and tests.
    """

    settle: float = 0.3

    def __init__(self, viewer: napari.viewer.Viewer, settings: Callable[[], tuple[Path, Any, str]],
                 **kwargs: Any) -> None:
        super().__init__(labels=True, **kwargs)
        self._viewer = viewer
        self._settings = settings
        self._worker: Any = None
        self._stop = threading.Event()
        self._models: dict[str, Any] = {}  # name → models.registry.ModelEntry, re-read when one is saved
        self.model = ComboBox(label="Predict with", choices=lambda *_: [*self._models, ONLY_WATCH],
                              tooltip="Model for the live predictions (shipped or fine-tuned)")
        self.threshold = FloatSlider(label="Threshold", min=0.05, max=0.95, step=0.01, value=0.5,
                                     tooltip="Minimum confidence of an atom in the live predictions")
        self.follow = CheckBox(text="Show each new frame", value=True)
        self.start_button = PushButton(text="Start watching")
        self.status = Label(value="")
        self.extend([self.model, self.threshold, self.follow, self.start_button, self.status])
        self.start_button.changed.connect(self._on_button)
        self.model.changed.connect(self._on_model)
        self.refresh_models()
        if "water" in self._models:
            self.model.value = "water"
        from ..models.registry import on_models_changed

        on_models_changed(self.refresh_models)
        self._folder: Path | None = None
        self._since = ""
        self._stacks: dict[str, dict[str, Any]] = {}  # name → heights, size, predicted, atoms, state
        self._problems: list[str] = []
        self._images: dict[str, Any] = {}  # name → image layer
        self._points: dict[str, Any] = {}  # name → atoms layer
        self._predicted: dict[str, Any] = {}  # name → the latest prediction as first shown
        self._auto_limits: dict[str, tuple[float, float]] = {}
        self._pending: dict[int, list[Callable[[], None]]] = {}  # id(layer) being inserted → what waits for it
        self._axes_due: dict[str, dict[str, Any]] = {}  # stack → layer kwargs whose scale and units are due
        self.log: list[tuple[str, str, int, float]] = []
        stop = self._stop
        self.native.destroyed.connect(lambda *_: stop.set())
        from ._vispy_cache import install

        install()  # each new layer's first draw re-parsed its shader code: ~50-75 ms for the first atoms layer

    # ------------------------------------------------------------- control
    @property
    def watching(self) -> bool:
        """True while the folder is being watched."""
        return self._worker is not None

    def refresh_models(self) -> None:
        """Re-read the shipped and user models (after a fine-tune, say)."""
        from ..models.registry import list_models

        self._models = {m.name: m for m in list_models()}
        current = self.model.value
        self.model.reset_choices()
        if current in self.model.choices:
            self.model.value = current
        self._on_model(self.model.value)

    def _on_model(self, name: str | None) -> None:
        entry = self._models.get(name)
        self.threshold.visible = entry is not None
        if entry is not None:
            self.threshold.value = entry.threshold  # the model's recommended threshold

    def _on_button(self, *_: Any) -> None:
        if self.watching:
            self.stop()
        else:
            self.start()

    def start(self) -> None:
        """Start watching the Load widget's folder in a worker thread."""
        from napari.qt.threading import create_worker

        from ..training.train import usable_device
        from .predict import _leave_a_core_for_the_viewer

        try:
            folder, channel, direction = self._settings()
            model = self._models[self.model.value].path if self.model.value in self._models else None
        except Exception as exc:  # noqa: BLE001 - shown to the user, the widget stays usable
            report_error(exc, self.status)
            return
        device, notice = usable_device("auto")
        if notice:
            from napari.utils.notifications import show_warning

            show_warning(notice)
        if device.type == "cpu":
            _leave_a_core_for_the_viewer()
        self._stop.clear()
        self._folder, self._since = folder, time.strftime("%H:%M:%S")
        self._stacks.clear()
        self._problems.clear()
        global _WARM
        warm_up = None if _WARM else threading.Event()
        self._worker = create_worker(_watch_job, folder, model, device, self.threshold.value, channel,
                                     direction, self.settle, self._stop.is_set, warm_up, _ignore_errors=True)
        _WARM = True
        self._worker.yielded.connect(self._on_record)
        self._worker.errored.connect(lambda exc: report_error(exc, self.status))
        self._worker.finished.connect(self._on_finished)
        self._worker.start()
        self.start_button.text = "Stop watching"
        self.model.enabled = self.threshold.enabled = False
        self._show_status()

    def stop(self) -> None:
        """Stop watching (a running prediction stops at its next tile)."""
        self._stop.set()
        if self._worker is not None:
            self._worker.quit()

    def _on_finished(self) -> None:
        self._worker = None
        try:
            self.start_button.text = "Start watching"
            self.model.enabled = self.threshold.enabled = True
            self._show_status()
        except RuntimeError:  # the widget was closed while watching
            pass

    # ------------------------------------------------------------- records
    def _on_record(self, item: tuple[Any, Any]) -> None:
        from ..io.watch import FileProblem, StackChanged
        from ..predict.live import AtomsPredicted, PredictionCancelled, PredictionFailed

        rec, extra = item
        if isinstance(rec, str):  # WARM_UP
            self._warm_up(*extra)
            return
        if isinstance(rec, StackChanged):
            self._show_stack(rec, *extra)
        elif isinstance(rec, AtomsPredicted):
            self._show_atoms(rec, extra)
        elif isinstance(rec, PredictionCancelled):
            self._stacks.setdefault(rec.name, {})["state"] = "newer frame: predicting again"
        elif isinstance(rec, (FileProblem, PredictionFailed)):
            from napari.utils.notifications import show_warning

            self._problems.append(rec.message)
            show_warning(rec.message)
        else:  # progress of a prediction: the status already says "predicting…"
            return
        self._show_status()

    def _warm_up(self, layers: list[Any], done: threading.Event) -> None:
        """Show the warm-up layers once (the first layers of a kind cost their controls, visuals and
        shader compilation), remove them, keep start-up objects out of the garbage collector's way
        (see the Predict widget), then let the worker start watching.

        No real layer is added before they are gone: real layers inserted while the warm-up layers
        were still there, followed by their removal, crashed llvmpipe (``glDrawArrays``)."""
        from qtpy.QtCore import QTimer

        for layer in layers:
            self._viewer.add_layer(layer)
        self._orient()

        def remove() -> None:
            try:
                for layer in layers:
                    if layer in self._viewer.layers:
                        self._viewer.layers.remove(layer)
                gc.collect()
                gc.freeze()
            finally:
                done.set()

        QTimer.singleShot(50, remove)

    def _orient(self) -> None:
        """y up, as the instrument software shows scans (setting the camera costs a redraw: only once)."""
        if tuple(self._viewer.camera.orientation2d) != ORIENTATION_2D:
            self._viewer.camera.orientation2d = ORIENTATION_2D

    def _present(self, layer: Any) -> bool:
        """The layer is in the viewer, or on its way in (see :meth:`_insert`)."""
        return layer is not None and (id(layer) in self._pending or layer in self._viewer.layers)

    def _insert(self, layer: Any) -> None:
        """Add a layer over several short event-loop turns (see ``_staging``: a first layer in one turn
        stalled the viewer for 160-240 ms); what :meth:`_when_shown` queues for it runs once it is shown."""
        from ._staging import add_layer_in_turns

        waiting: list[Callable[[], None]] = []
        self._pending[id(layer)] = waiting

        def shown() -> None:
            self._pending.pop(id(layer), None)
            try:
                self._orient()
                for f in waiting:
                    f()
                self._show_status()
            except RuntimeError:  # the widget was closed in the meantime
                pass

        def failed(exc: BaseException) -> None:
            self._pending.pop(id(layer), None)
            try:
                report_error(exc, self.status)
            except RuntimeError:
                pass

        add_layer_in_turns(self._viewer, layer, done=shown, failed=failed)

    def _when_shown(self, layer: Any, f: Callable[[], None]) -> None:
        """Run ``f`` now, or once the layer is shown if it is still on its way in."""
        waiting = self._pending.get(id(layer))
        if waiting is None:
            f()
        else:
            waiting.append(f)

    @staticmethod
    def _axes_differ(layer: Any, kwargs: dict[str, Any]) -> bool:
        return (not np.allclose(layer.scale, kwargs["scale"], rtol=1e-6, atol=0)
                or tuple(str(u) for u in layer.units) != tuple(str(u) for u in kwargs["units"]))

    def _set_axes(self, name: str, layer: Any) -> None:
        """Give a stack layer (and its atoms) the scale and units of the latest frames, if still due."""
        kwargs = self._axes_due.pop(name, None)
        if kwargs is None or not self._present(layer):
            return
        if not np.allclose(layer.scale, kwargs["scale"], rtol=1e-6, atol=0):
            layer.scale = kwargs["scale"]
        units = tuple(str(u) for u in kwargs["units"])
        if tuple(str(u) for u in layer.units) != units:
            layer.units = units
            if self._present(self._points.get(name)):
                self._points[name].units = units[-2:]

    def _show_stack(self, rec: StackChanged, data: np.ndarray, kwargs: dict[str, Any], built: Any) -> None:
        from napari.layers import Image
        from qtpy.QtCore import QTimer

        from ._staging import GAP_MS

        layer = self._images.get(rec.name)
        if not self._present(layer):
            layer = built if built is not None else Image(data, **kwargs)  # (made here if the user deleted it)
            self._images[rec.name] = layer
            self._insert(layer)
        else:
            auto = tuple(layer.contrast_limits) == self._auto_limits.get(rec.name)
            layer.metadata = kwargs["metadata"]
            layer.data = data
            if auto:  # the user has not changed the contrast: follow the data
                layer.contrast_limits_range = kwargs["contrast_limits"]
                layer.contrast_limits = kwargs["contrast_limits"]
        self._auto_limits[rec.name] = tuple(layer.contrast_limits)
        sources = list(rec.stack.metadata.get("sources", []))
        newest = max(sources.index(str(p)) for p in rec.paths if str(p) in sources) if sources else 0
        point = float(kwargs["translate"][0] + newest * kwargs["scale"][0])

        def shown() -> None:
            # in a later event-loop turn: moving the slider re-slices every layer
            if self.follow.value and not np.isclose(self._viewer.dims.point[0], point):
                QTimer.singleShot(GAP_MS, lambda: self._viewer.dims.set_point(0, point))
            now = time.time()
            self.log.extend(("frame", p.name, rec.stack.n_heights, now) for p in rec.paths)

        if not self._axes_differ(layer, kwargs):
            self._when_shown(layer, shown)
        elif id(layer) in self._pending:  # not in the viewer yet: nothing to update but the layer
            self._axes_due[rec.name] = kwargs
            self._set_axes(rec.name, layer)
            self._when_shown(layer, shown)
        else:
            # the height axis changed (the second frame gives the height step): its scale and units, which
            # update the dims and every layer, follow the data in a turn of their own
            self._axes_due[rec.name] = kwargs
            QTimer.singleShot(GAP_MS, lambda: self._closed_safe(lambda: self._set_axes(rec.name, layer), shown))
        self._set_state(rec)

    @staticmethod
    def _closed_safe(*steps: Callable[[], Any]) -> None:
        try:
            for f in steps:
                f()
        except RuntimeError:  # the widget was closed in the meantime
            pass

    def _set_state(self, rec: StackChanged) -> None:
        info = self._stacks.setdefault(rec.name, {})
        info.update(heights=rec.stack.n_heights, size=rec.scan_frame.describe())
        if rec.stack.n_heights < 2 or self.model.value == ONLY_WATCH:
            info["state"] = "needs 2 heights to predict" if rec.stack.n_heights < 2 else ""
        else:
            info["state"] = "predicting…"

    def _show_atoms(self, rec: AtomsPredicted, built: Any) -> None:
        from ..predict.live import keep_edits

        layer = self._points.get(rec.name)
        if not self._present(layer):
            if built is None:  # the user deleted the layer: make a new one here
                built = _atoms_layer(rec)
            image = self._images.get(rec.name)
            if image is not None:
                built.units = tuple(image.units)[-2:]  # the same lateral axes as the stack's layer
            self._points[rec.name] = layer = built
            self._insert(built)
            shown = rec.atoms
        else:
            shown = keep_edits(self._predicted[rec.name], atoms_of_layer(layer), rec.atoms)
            data, kwargs, _ = atoms_layer_data(shown)
            layer.data = data
            layer.features = kwargs["features"]
            layer.size = kwargs["size"]
            layer.refresh_colors()
            layer.metadata.setdefault(ATOMS_KEY, {})["closest_probe"] = rec.atoms.info.get("closest_probe")
        self._predicted[rec.name] = rec.atoms
        self._when_shown(layer, lambda: self.log.append(("atoms", rec.name, rec.n_heights, time.time())))
        info = self._stacks.setdefault(rec.name, {})
        running_again = info.get("heights", 0) > rec.n_heights
        info.update(predicted=time.strftime("%H:%M:%S", time.localtime(rec.finished_at)), atoms=len(shown),
                    seconds=rec.seconds, predicted_heights=rec.n_heights,
                    state="predicting…" if running_again else "")

    # -------------------------------------------------------------- status
    def _show_status(self) -> None:
        if self._folder is None:
            return
        head = f"Watching {self._folder.name}/ since {self._since}" if self.watching else \
            f"Stopped watching {self._folder.name}/"
        lines = [head]
        if not self._stacks:
            lines.append("no frames yet")
        for name, s in self._stacks.items():
            line = f"• {name}: {s.get('heights', 0)} height(s), {s.get('size', '')}"
            if "predicted" in s:
                line += (f"\n   predicted {s['predicted']} from {s['predicted_heights']} heights "
                         f"({s['seconds']:.1f} s): {s['atoms']} atoms")
            if s.get("state") and self.watching:
                line += f"\n   {s['state']}"
            lines.append(line)
        for msg in self._problems[-3:]:
            lines.append("⚠ " + msg)
        self.status.value = "\n".join(lines)
