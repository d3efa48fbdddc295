"""Take the documentation screenshots from the running app (needs a display; use xvfb-run).

    xvfb-run -a -s "-screen 0 1400x900x24" python scripts/screenshots.py
"""

from __future__ import annotations

from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from hydrafm._sample_data import sample_path

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(title="HydrAFM", show=True)
    viewer.window.resize(1300, 800)
    dock, widget = viewer.window.add_plugin_dock_widget("hydrafm", "Load AFM stack")
    widget.files.value = [sample_path()]
    widget.load()
    app = QApplication.instance()
    while not viewer.layers:
        app.processEvents()
    for _ in range(20):
        app.processEvents()
    viewer.dims.set_point(0, 0.0)
    viewer.reset_view()
    app.processEvents()
    viewer.screenshot(str(OUT / "load_widget.png"), canvas_only=False)
    viewer.close()


if __name__ == "__main__":
    main()
