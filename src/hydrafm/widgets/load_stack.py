"""The "Load AFM stack" dock widget: files or a folder → one image layer in Å; or watch a folder live."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox, Label, PushButton, RadioButtons

from .._layers import ORIENTATION_2D, stack_layer_data
from ..io import AFMFileError, list_channels, load_stack
from ..stack import AFMStack
from .live import WATCH, WatchPanel

if TYPE_CHECKING:
    import napari

AUTO_CHANNEL = "Δf (auto)"


def describe(stack: AFMStack) -> str:
    """A few lines about a loaded stack for the widget's info label."""
    n, ny, nx = stack.shape
    h = stack.heights
    heights = "unknown" if h is None else f"{h[0]:.2f} … {h[-1]:.2f} Å" if n > 1 else "one frame"
    return (
        f"{n} height(s) × {ny} × {nx} px, pixel {stack.pixel_size[1]:.3f} × {stack.pixel_size[0]:.3f} Å\n"
        f"scan {stack.extent[1]:.1f} × {stack.extent[0]:.1f} Å, angle {stack.scan_angle:g}°\n"
        f"channel {stack.channel} [{stack.units}], heights {heights}"
    )


class LoadStackWidget(Container):
    """Choose files or a folder, a channel and a direction; show the stack as an image layer.

    Heights are the slider axis; the layer carries the physical scale (Å) and the
    scan's metadata, and the viewer's y axis is set to point up so frames look
    as the instrument software shows them. *Watch folder* follows a folder the
    instrument is writing to (:class:`~hydrafm.widgets.live.WatchPanel`).
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self._worker: Any = None
        self.source = RadioButtons(choices=["Files", "Folder", WATCH], value="Files", label="Open",
                                   orientation="horizontal")
        self.files = FileEdit(mode="rm", label="Files", filter="AFM files (*.sxm *.3ds *.dat *.npz *.tif *.tiff *.gwy *.png)")
        self.folder = FileEdit(mode="d", label="Folder", visible=False)
        self.channel = ComboBox(choices=[AUTO_CHANNEL], value=AUTO_CHANNEL, label="Channel")
        self.direction = ComboBox(choices=["forward", "backward"], value="forward", label="Direction")
        self.scan_size = FloatSpinBox(value=0.0, min=0.0, max=1e6, step=1.0, label="Scan size (Å)",
                                      tooltip="Only for files without a scan size (PNG, TIFF); 0 = from the file")
        self.load_button = PushButton(text="Load")
        self.info = Label(value="")
        self.watch = WatchPanel(viewer, self._watch_settings, label=" ", visible=False)
        self.extend([self.source, self.files, self.folder, self.channel, self.direction, self.scan_size,
                     self.load_button, self.watch, self.info])
        self.source.changed.connect(self._on_source)
        self.files.changed.connect(self._refresh_channels)
        self.folder.changed.connect(self._refresh_channels)
        self.load_button.changed.connect(self.load)

    # ----------------------------------------------------------------- state
    def selected_paths(self) -> list[Path]:
        """The files or folder currently chosen (empty when nothing is)."""
        if self.source.value != "Files":
            p = Path(self.folder.value)
            return [p] if str(self.folder.value) not in ("", ".") and p.is_dir() else []
        vals = self.files.value or []
        vals = vals if isinstance(vals, (list, tuple)) else [vals]
        return [Path(v) for v in vals if str(v) not in ("", ".") and Path(v).is_file()]

    def _on_source(self, value: str) -> None:
        self.files.visible = value == "Files"
        self.folder.visible = value != "Files"
        self.load_button.visible = self.scan_size.visible = value != WATCH
        self.watch.visible = value == WATCH
        self._refresh_channels()

    def _watch_settings(self) -> tuple[Path, str | None, str]:
        """The folder, channel and direction to watch (Watch folder mode)."""
        paths = self.selected_paths()
        if not paths:
            raise ValueError("Choose the folder the instrument writes its files to first.")
        channel = None if self.channel.value == AUTO_CHANNEL else self.channel.value
        return paths[0], channel, self.direction.value

    def _refresh_channels(self, *_: Any) -> None:
        paths = self.selected_paths()
        names = list_channels(paths[0]) if paths else []
        current = self.channel.value
        self.channel.choices = [AUTO_CHANNEL, *dict.fromkeys(names)]
        if current in self.channel.choices:
            self.channel.value = current

    # ------------------------------------------------------------------ load
    def load(self, *_: Any) -> None:
        """Read the chosen files in a background thread and add the layer."""
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_error

        paths = self.selected_paths()
        if not paths:
            show_error("Choose AFM files or a folder first.")
            return
        channel = None if self.channel.value == AUTO_CHANNEL else self.channel.value
        kwargs = dict(direction=self.direction.value,
                      scan_size=self.scan_size.value or None)
        target = paths[0] if self.source.value == "Folder" else paths
        self.load_button.enabled = False
        self.info.value = "Loading…"
        self._worker = create_worker(load_stack, target, channel, _progress={"desc": "Loading AFM stack"},
                                     _ignore_errors=True, **kwargs)
        self._worker.returned.connect(self._on_loaded)
        self._worker.errored.connect(self._on_error)
        self._worker.finished.connect(lambda: setattr(self.load_button, "enabled", True))
        self._worker.start()

    def _on_loaded(self, stack: AFMStack) -> None:
        data, kwargs, _ = stack_layer_data(stack)
        self._viewer.add_image(data, **kwargs)
        self._viewer.camera.orientation2d = ORIENTATION_2D
        self._viewer.dims.axis_labels = ("height", "y", "x")
        self.info.value = describe(stack)

    def _on_error(self, exc: Exception) -> None:
        from napari.utils.notifications import show_error

        message = str(exc) if isinstance(exc, (AFMFileError, ValueError)) else f"{type(exc).__name__}: {exc}"
        self.info.value = "Could not load: " + message
        show_error(message)
