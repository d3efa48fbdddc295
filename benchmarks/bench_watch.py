"""Live mode (issue 17): half-written reads, and the latency and stalls of the Watch folder mode.

    python benchmarks/bench_watch.py writes [--n 1000] [--writers 4] [--settle 0.3] [--seed 0]

replays N file writes into a fresh folder from several writer threads at once: each file is
written in 2-6 pieces with random pauses of up to 50 ms, and 10 % of the pauses last 0.35-0.5 s,
longer than the settle time, so that a file looks finished while it is not. The watcher
(:class:`hydrafm.io.watch.FolderWatcher`) polls every 0.1 s. Every frame it accepts is
compared with the same file read whole: a frame that differs, or one accepted before its writer
finished, is a half-written read. Sources: the public .sxm stack and a Createc .dat in
../shared/testdata (or HYDRAFM_TESTDATA), else the bundled sample written as .sxm files.

    xvfb-run -a python benchmarks/bench_watch.py gui [--frames 10] [--gap 3] [--model water]

opens napari with the Load widget in Watch folder mode and replays the bundled sample (10
heights, 128 × 128 px) as .sxm files, one every GAP seconds, each written slowly in pieces. A
5 ms QTimer on the main thread measures the longest stall; for every frame it prints the time
from the file being complete to its layer updated and to a prediction that includes it shown.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test writers: .sxm files, slow writes

from synth import replay, slow_write, write_stack_sxm  # noqa: E402

TESTDATA = Path(os.environ.get("HYDRAFM_TESTDATA", ROOT.parent / "shared" / "testdata"))


def _sources(tmp: Path) -> list[Path]:
    if (TESTDATA / "MANIFEST.md").exists():
        return sorted((TESTDATA / "nanonis_stack_borazine_Cu111").glob("*.sxm")) + \
            [TESTDATA / "ProbeFlow_createc_afm.dat"]
    return _sample_files(tmp)


def _sample_files(tmp: Path) -> list[Path]:
    from hydrafm._sample_data import sample_path
    from hydrafm.io import load_stack

    return write_stack_sxm(load_stack(sample_path()), tmp / "sample", prefix="sample")


def bench_writes(n: int, writers: int, settle: float, seed: int) -> dict:
    """Replay ``n`` writes; count half-written reads."""
    from hydrafm.io import read_frame
    from hydrafm.io.watch import FileProblem, FolderWatcher, StackChanged

    warnings.simplefilter("ignore")  # Createc's guessed-Δf warning, once per file
    tmp = Path(tempfile.mkdtemp(prefix="hydrafm-bench-watch-"))
    sources = _sources(tmp)
    truth = {p.name: read_frame(p).data for p in sources}
    folder = tmp / "watched"
    folder.mkdir()
    rng = np.random.default_rng(seed)
    plan = [(f"w{k:04d}_{sources[i].name}", sources[i]) for k, i in enumerate(rng.integers(0, len(sources), n))]
    complete: dict[str, float] = {}

    def writer(jobs: list[tuple[str, Path]], seed: int) -> None:
        r = np.random.default_rng(seed)
        for name, src in jobs:
            complete[name] = slow_write(folder / name, src.read_bytes(), r, chunks=int(r.integers(2, 7)),
                                        pause=(0.0, 0.05), long_pause=float(r.uniform(0.35, 0.5)), p_long=0.1)
            time.sleep(float(r.uniform(0, 0.1)))

    threads = [threading.Thread(target=writer, args=(plan[w::writers], seed * 100 + w)) for w in range(writers)]
    watcher = FolderWatcher(folder, settle=settle)
    accepted: dict[str, float] = {}
    problems: list[str] = []
    mismatched: list[str] = []
    t0 = time.time()
    for t in threads:
        t.start()
    poll_ms: list[float] = []
    while len(accepted) + len(problems) < n and time.time() - t0 < 600:
        start = time.perf_counter()
        records = watcher.poll()
        poll_ms.append((time.perf_counter() - start) * 1000)
        now = time.time()
        for rec in records:
            if isinstance(rec, FileProblem):
                problems.append(rec.message)
            elif isinstance(rec, StackChanged):
                frames = {f.path: f for f in watcher.stacks[rec.name].frames}
                for p in rec.paths:
                    accepted[p.name] = now
                    source_name = p.name.split("_", 1)[1]
                    if not np.array_equal(frames[p].data, truth[source_name]):
                        mismatched.append(p.name)
        time.sleep(0.1)
    for t in threads:
        t.join()
    early = [name for name, t in accepted.items() if t < complete[name]]
    latency = np.array([accepted[k] - complete[k] for k in accepted])
    shutil.rmtree(tmp, ignore_errors=True)
    return {"writes": n, "writers": writers, "settle_s": settle, "accepted": len(accepted),
            "half_written_reads": len(mismatched), "accepted_before_complete": len(early),
            "not_read": n - len(accepted), "problems": problems[:5],
            "looked_complete_but_cut_short": watcher.stats["cut_short"],
            "changed_while_reading": watcher.stats["changed_while_reading"],
            "complete_to_read_s": {"median": round(float(np.median(latency)), 3),
                                   "p95": round(float(np.percentile(latency, 95)), 3),
                                   "max": round(float(latency.max()), 3)},
            "poll_ms": {"median": round(float(np.median(poll_ms)), 2), "max": round(float(max(poll_ms)), 2)},
            "sources": f"{len(sources)} files ({', '.join(sorted({p.suffix for p in sources}))})",
            "wall_s": round(time.time() - t0, 1)}


def bench_gui(frames: int, gap: float, model: str, settle: float) -> dict:
    """The Load widget watching a folder while the sample is replayed into it."""
    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from hydrafm.widgets.live import WARM_UP, WATCH
    from hydrafm.widgets.load_stack import LoadStackWidget

    tmp = Path(tempfile.mkdtemp(prefix="hydrafm-bench-watch-gui-"))
    files = _sample_files(tmp)[:frames]
    folder = tmp / "watched"
    folder.mkdir()
    viewer = napari.Viewer(show=True)
    w = LoadStackWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.source.value = WATCH
    w.folder.value = folder
    w.watch.model.value = model
    w.watch.settle = settle
    app = QApplication.instance()

    def settle_gui(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.002)

    gaps: list[float] = []
    ends: list[float] = []  # time.time() at the end of each gap
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        ends.append(time.time())
        last[0] = now

    w.watch.start()
    seen = False  # wait for the warm-up layers to come and go (the renderers' one-off start-up cost)
    end = time.perf_counter() + 60
    while time.perf_counter() < end:
        names = [layer.name for layer in viewer.layers]
        seen = seen or any(n.startswith(WARM_UP) for n in names)
        if seen and not any(n.startswith(WARM_UP) for n in names):
            break
        settle_gui(0.05)
    settle_gui(1.0)
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(tick)
    last[0] = time.perf_counter()
    timer.start()
    complete: dict[str, float] = {}
    writer = threading.Thread(target=lambda: complete.update(
        replay(files, folder, seed=0, gap=gap, chunks=4, pause=(0.01, 0.05))), daemon=True)
    writer.start()
    while writer.is_alive() or not any(e[0] == "atoms" and e[2] == len(files) for e in w.watch.log):
        settle_gui(0.05)
        if time.perf_counter() - last[0] > 120:
            break
    settle_gui(0.5)
    timer.stop()
    w.watch.stop()
    while w.watch.watching:
        settle_gui(0.05)
    shown = {e[1]: e[3] for e in w.watch.log if e[0] == "frame"}
    atoms = [(e[2], e[3]) for e in w.watch.log if e[0] == "atoms"]
    rows = []
    for k, f in enumerate(files, start=1):
        layer = shown[f.name] - complete[f.name]
        later = [t for n, t in atoms if n >= k and t >= complete[f.name]]
        pred = (min(later) - complete[f.name]) if k >= 2 and later else None
        rows.append({"frame": k, "layer_s": round(layer, 3), "prediction_s": None if pred is None else round(pred, 3)})
        print(json.dumps(rows[-1]), flush=True)
    stall = max(0.0, max(gaps) - 0.005) * 1000
    # the stalls over 50 ms and the layer update that ended just before each (what the main thread did)
    long_stalls = []
    for g, end in sorted(zip(gaps, ends), reverse=True)[:5]:
        if g < 0.055:
            break
        before = [e for e in w.watch.log if e[3] <= end + 0.002]
        what = f"{before[-1][0]} {before[-1][2]} heights" if before and end - before[-1][3] < g + 0.01 else "other"
        long_stalls.append({"ms": round((g - 0.005) * 1000, 1), "during": what})
    viewer.close()
    shutil.rmtree(tmp, ignore_errors=True)
    import torch

    preds = [r["prediction_s"] for r in rows if r["prediction_s"] is not None]
    return {"frames": len(files), "gap_s": gap, "settle_s": settle, "shape": [len(files), 128, 128],
            "model": model, "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "layer_s_max": max(r["layer_s"] for r in rows), "prediction_s_max": max(preds),
            "predictions_shown": len(atoms), "max_stall_ms": round(stall, 1), "stalls_over_50ms": long_stalls,
            "p99_gap_ms": round(float(np.percentile(gaps, 99)) * 1000, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    wr = sub.add_parser("writes", help="half-written reads in N replayed writes")
    wr.add_argument("--n", type=int, default=1000)
    wr.add_argument("--writers", type=int, default=4)
    wr.add_argument("--settle", type=float, default=0.3)
    wr.add_argument("--seed", type=int, default=0)
    gui = sub.add_parser("gui", help="latency and main-thread stalls of the Watch folder mode (needs a display)")
    gui.add_argument("--frames", type=int, default=10)
    gui.add_argument("--gap", type=float, default=3.0, help="seconds between frames")
    gui.add_argument("--model", default="water")
    gui.add_argument("--settle", type=float, default=0.3)
    args = ap.parse_args()
    if args.what == "writes":
        print(json.dumps(bench_writes(args.n, args.writers, args.settle, args.seed)))
    else:
        print(json.dumps(bench_gui(args.frames, args.gap, args.model, args.settle)))


if __name__ == "__main__":
    main()
