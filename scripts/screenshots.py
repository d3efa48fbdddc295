"""Take the documentation screenshots from the running app (needs a display; use xvfb-run).

    xvfb-run -a -s "-screen 0 1400x900x24" python scripts/screenshots.py [--model water]

Writes docs/images/load_widget.png, predict_widget.png, predict_verify.png and
finetune_widget.png. The Predict shots use the given model (a shipped name or a file).

    xvfb-run -a -s "-screen 0 1400x1000x24" python scripts/screenshots.py --only hydration \
        [--density-model hydration-calcite]

writes docs/images/hydration_widget.png and hydration_slice.png (calcite (10-14) with two vacancy pairs).

    xvfb-run -a -s "-screen 0 1400x900x24" python scripts/screenshots.py --only live

writes docs/images/live_watch.png: the Load widget watching a folder into which the bundled
sample is being written as .sxm files, one height at a time (6 of 10 heights so far).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from hydrafm._sample_data import sample_path

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"


def _settle(app, seconds: float = 0.5) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)


def _wait(app, widget) -> None:
    while widget.running:
        app.processEvents()
        time.sleep(0.01)
    _settle(app)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="water")
    ap.add_argument("--only", choices=["hydration", "live"])
    ap.add_argument("--density-model", default="hydration-calcite")
    args = ap.parse_args()
    if args.only == "hydration":
        hydration_shot(args.density_model)
        return
    if args.only == "live":
        live_shot(args.model)
        return
    OUT.mkdir(parents=True, exist_ok=True)
    app = None

    # 1. Load widget
    viewer = napari.Viewer(title="HydrAFM", show=True)
    viewer.window.resize(1300, 800)
    dock, widget = viewer.window.add_plugin_dock_widget("hydrafm", "Load AFM stack")
    widget.files.value = [sample_path()]
    widget.load()
    app = QApplication.instance()
    while not viewer.layers:
        app.processEvents()
    _settle(app)
    viewer.dims.set_point(0, 0.0)
    viewer.reset_view()
    app.processEvents()
    viewer.screenshot(str(OUT / "load_widget.png"), canvas_only=False)

    # 2. Predict on the sample
    viewer.window.remove_dock_widget(dock)
    predict_dock, predict = viewer.window.add_plugin_dock_widget("hydrafm", "Predict atoms")
    from hydrafm.models.registry import model_path

    if args.model in predict.model.choices:
        predict.model.value = args.model
    else:
        predict.model_file.value = model_path(args.model)
    predict.predict()
    _wait(app, predict)
    viewer.layers.selection.active = predict._last_result
    viewer.screenshot(str(OUT / "predict_widget.png"), canvas_only=False)

    # 3. Verify by simulation: the simulated stack and the residual beside the experiment
    predict.verify()
    _wait(app, predict)
    viewer.grid.enabled = True
    viewer.grid.shape = (1, -1)
    stack_name = predict.stack.value.name
    for layer in viewer.layers:
        layer.visible = layer.name.startswith(("simulated", "residual")) or layer.name == stack_name
    viewer.reset_view()
    _settle(app)
    viewer.screenshot(str(OUT / "predict_verify.png"), canvas_only=False)
    viewer.grid.enabled = False

    # 4. Fine-tune panel after a short run on two corrected copies of the sample's atoms
    import os
    import tempfile

    os.environ["HYDRAFM_DATA"] = tempfile.mkdtemp(prefix="hydrafm-screenshots-")
    for layer in viewer.layers:
        layer.visible = layer._type_string == "points" or layer.name == stack_name
    viewer.reset_view()
    atoms = predict._last_result
    from hydrafm._layers import atoms_layer_data
    from hydrafm.widgets._common import atoms_of_layer

    data, kwargs, _ = atoms_layer_data(atoms_of_layer(atoms), "atoms (corrected)",
                                       atoms.metadata.get("hydrafm_atoms"))
    copy = viewer.add_points(data, **kwargs, visible=False)
    viewer.window.remove_dock_widget(predict_dock)
    viewer.window.resize(1300, 950)
    _, ft = viewer.window.add_plugin_dock_widget("hydrafm", "Fine-tune a model")
    ft.atoms_layers.value = [atoms, copy]
    ft.name.value = "my-bilayer"
    ft.epochs.value = 4
    ft.batch_size.value = 1
    ft.val_fraction.value = 0.5
    ft.device.value = "cpu"
    ft.start()
    _wait(app, ft)
    viewer.screenshot(str(OUT / "finetune_widget.png"), canvas_only=False)
    viewer.close()

    # 5. A real scan: Jiang lab water on Au(111) from ../shared/testdata (not shipped), if present
    real = Path(os.environ.get("HYDRAFM_TESTDATA", Path(__file__).resolve().parents[2] / "shared" / "testdata"))
    real = real / "jiang_lab_water_Au111" / "L1_20_L2_1Ying_Jiang_1.npz"
    if real.exists():
        viewer = napari.Viewer(title="HydrAFM", show=True)
        viewer.window.resize(1300, 800)
        viewer.open(str(real), plugin="hydrafm")
        _, predict = viewer.window.add_plugin_dock_widget("hydrafm", "Predict atoms")
        if args.model in predict.model.choices:
            predict.model.value = args.model
        predict.predict()
        _wait(app, predict)
        viewer.dims.set_point(0, 0)
        viewer.reset_view()
        _settle(app)
        viewer.screenshot(str(OUT / "predict_real.png"), canvas_only=False)
        viewer.close()


def hydration_shot(model: str) -> None:
    """The Hydration widget on calcite (10-14) with vacancies: the 3D view it opens with, then a second height.

    Writes docs/images/hydration_widget.png (as opened: looking down at the surface,
    isosurfaces coloured by height, the xy slice at the first ρ(z) peak) and
    hydration_slice.png (the height slider at the second peak, the isosurfaces hidden).
    """
    OUT.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(title="HydrAFM", show=True)
    viewer.window.resize(1500, 950)
    _, w = viewer.window.add_plugin_dock_widget("hydrafm", "Hydration density (CaCO3)")
    app = QApplication.instance()
    if model in w.model.choices:
        w.model.value = model
    else:
        w.model_file.value = model
    w.surface.value = "calcite-104"
    w.vacancies.value = 2
    w.seed.value = 3
    w.predict()
    _wait(app, w)
    _settle(app, 1.0)
    viewer.screenshot(str(OUT / "hydration_widget.png"), canvas_only=False)
    from hydrafm.hydration.workflow import density_profile_peaks

    w.slice_height.value = round(density_profile_peaks(w.result()[1])[1], 1)
    for layer in viewer.layers:
        if layer.metadata.get("hydrafm_derived") == "isosurface":
            layer.visible = False
    _settle(app, 1.0)
    viewer.screenshot(str(OUT / "hydration_slice.png"), canvas_only=False)
    viewer.close()


def live_shot(model: str, heights: int = 6) -> None:
    """Watch folder mode mid-measurement: the stack layer growing, its atoms, the status."""
    import sys
    import tempfile
    import threading

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from synth import replay, write_stack_sxm

    from hydrafm.io import load_stack
    from hydrafm.widgets.live import WATCH

    tmp = Path(tempfile.mkdtemp(prefix="hydrafm-screenshots-"))
    files = write_stack_sxm(load_stack(sample_path()), tmp / "made", prefix="A260301.1402")
    folder = tmp / "2026-03-01"
    folder.mkdir()
    viewer = napari.Viewer(title="HydrAFM", show=True)
    viewer.window.resize(1300, 800)
    _, w = viewer.window.add_plugin_dock_widget("hydrafm", "Load AFM stack")
    app = QApplication.instance()
    w.source.value = WATCH
    w.folder.value = folder
    w.watch.model.value = model
    w.watch.start()
    writer = threading.Thread(target=replay, args=(files[:heights], folder), kwargs={"gap": 1.0})
    writer.start()
    while writer.is_alive() or not any(e[0] == "atoms" and e[2] == heights for e in w.watch.log):
        _settle(app, 0.1)
    _settle(app, 1.0)
    viewer.reset_view()
    _settle(app)
    viewer.screenshot(str(OUT / "live_watch.png"), canvas_only=False)
    w.watch.stop()
    while w.watch.watching:
        _settle(app, 0.1)
    viewer.close()


if __name__ == "__main__":
    main()
