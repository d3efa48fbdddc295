"""Longest main-thread stall of the napari viewer while the Predict widget runs.

    xvfb-run -a python benchmarks/bench_gui_stall.py [--model water] [--size 128] [--runs 3]
    xvfb-run -a python benchmarks/bench_gui_stall.py --action verify [--runs 3]

``--action verify`` times *Verify by simulation* (the torch engine in the worker) on the
sample's true atoms instead of *Predict*.

A QTimer ticks every 5 ms on the Qt main thread during each prediction; the
longest gap between ticks (minus the 5 ms period) is how long the viewer could not
react to the user. Adding the result layer is included (it happens on the main
thread when the worker returns). Target: ≤ 100 ms.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="water", help="model name or checkpoint file")
    ap.add_argument("--size", type=int, default=128, help="scan size in px (the sample, resampled)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--action", default="predict", choices=["predict", "verify"])
    args = ap.parse_args()

    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from hydrafm._layers import stack_layer_data
    from hydrafm._sample_data import sample_path
    from hydrafm.io import load_stack
    from hydrafm.models.registry import model_path
    from hydrafm.stack import AFMStack
    from hydrafm.widgets.predict import PredictWidget

    viewer = napari.Viewer(show=True)
    stack = load_stack(sample_path())
    if args.size != stack.data.shape[-1]:
        from scipy.ndimage import zoom

        f = args.size / stack.data.shape[-1]
        stack = AFMStack(zoom(stack.data, (1, f, f), order=1), tuple(p / f for p in stack.pixel_size),
                         stack.heights, stack.origin, stack.metadata)
    data, kwargs, _ = stack_layer_data(stack, "scan")
    viewer.add_image(data, **kwargs)
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.model_file.value = model_path(args.model)
    w.device.value = args.device
    app = QApplication.instance()
    if args.action == "verify":
        from hydrafm._layers import atoms_layer_data
        from hydrafm.io.xyz import read_xyz

        truth = read_xyz(sample_path("water_bilayer.xyz"))
        pdata, pkw, _ = atoms_layer_data(truth, "truth", {"stack": "scan"})
        pts = viewer.add_points(pdata, **pkw)
    for _ in range(20):
        app.processEvents()

    gaps: list[float] = []
    at: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        at.append(last[0] - t0)
        last[0] = now

    t0 = time.perf_counter()
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(tick)
    results = []
    for _ in range(args.runs):
        gaps.clear()
        at.clear()
        t0 = time.perf_counter()
        last[0] = t0
        timer.start()
        if args.action == "verify":
            viewer.layers.selection.active = pts  # Verify takes the selected atoms layer
            w.verify()
        else:
            w.predict()
        while w.running:
            app.processEvents()
            time.sleep(0.001)
        for _ in range(10):  # let the layer draw
            app.processEvents()
            time.sleep(0.005)
        timer.stop()
        wall = time.perf_counter() - t0
        stall = max(0.0, max(gaps) - 0.005) * 1000 if gaps else float("nan")
        results.append({"wall_s": round(wall, 3), "max_stall_ms": round(stall, 1),
                        "p99_gap_ms": round(float(np.percentile(gaps, 99)) * 1000, 1), "ticks": len(gaps),
                        "worst_at_s": round(at[int(np.argmax(gaps))], 3) if gaps else None,
                        "widget_says": w.info.value[:80]})
        print(json.dumps(results[-1]), flush=True)
    print(json.dumps({"action": args.action, "size_px": args.size, "runs": args.runs,
                      "max_stall_ms": max(r["max_stall_ms"] for r in results), "target_ms": 100}))
    viewer.close()


if __name__ == "__main__":
    main()
