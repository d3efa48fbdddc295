"""The water-window pool: MD runs → 2.5 × 2.5 × 0.3 nm windows of whole molecules.

As in Tang et al., a detection window is slid parallel to the wall (random lateral
offsets, periodic) and perpendicular to it (window bottoms stepped through the film),
so the pool holds contact layers, second layers, dense and dilute networks. A
molecule belongs to a window when its O atom does; its two H atoms come with it.

:func:`make_water_pool` is resumable: every finished MD run is cached as a small
``.npz`` in ``cache_dir`` and skipped next time; cutting windows is deterministic
given the seed.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from itertools import product
from pathlib import Path
from typing import Generator, Sequence

import numpy as np

from .._atomic import atomic_path
from ..progress import Progress
from .pool import StructurePool
from .water_md import MDFrames, MDRun, run_water_md

__all__ = ["WindowSpec", "cut_windows", "default_runs", "make_water_pool", "SURFACE_CODES"]

SURFACE_CODES = {"Au": 0, "Pt": 1, "NaCl": 2}


@dataclass(frozen=True)
class WindowSpec:
    """Size of the detection window and how many windows to cut per MD frame."""

    size_x: float = 25.0
    size_y: float = 25.0
    thickness: float = 3.0
    z_step: float = 1.0
    offsets_per_level: int = 6
    windows_per_frame: int = 28
    min_molecules: int = 4


def default_runs(seed: int = 0, scale: float = 1.0) -> list[MDRun]:
    """The runs behind the shipped pool: Au and Pt, three coverages, three temperatures.

    ``scale`` shortens production time (for tests and quick looks).
    """
    runs = []
    for k, (wall, n_waters, temperature) in enumerate(product(("Au", "Pt"), (120, 250, 450), (220.0, 260.0, 300.0))):
        runs.append(
            MDRun(
                wall=wall,
                n_waters=n_waters,
                temperature=temperature,
                seed=seed * 1000 + k,
                equilibration_ps=20.0 * scale,
                production_ps=100.0 * scale,
                frame_every_ps=2.0,
            )
        )
    return runs


def cut_windows(
    water: np.ndarray,
    cell: tuple[float, float],
    spec: WindowSpec,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Cut windows from one frame of water (``(3n, 3)`` Å, O H H per molecule, z above the wall).

    Returns a list of ``(3m, 3)`` arrays in window coordinates (x, y from the
    window's corner, z from its bottom).
    """
    lx, ly = cell
    if spec.size_x > lx or spec.size_y > ly:
        raise ValueError(f"window {spec.size_x}×{spec.size_y} Å is larger than the MD cell {lx:.1f}×{ly:.1f} Å")
    mol = water.reshape(-1, 3, 3)
    o = mol[:, 0, :]
    z_lo, z_hi = float(o[:, 2].min()), float(o[:, 2].max())
    levels = np.arange(z_lo - 0.2, z_hi - 0.5, spec.z_step)
    if levels.size == 0:
        levels = np.array([z_lo - 0.2])
    candidates = []
    for z0 in levels:
        for _ in range(spec.offsets_per_level):
            x0, y0 = rng.uniform(0, lx), rng.uniform(0, ly)
            dx = (o[:, 0] - x0) % lx
            dy = (o[:, 1] - y0) % ly
            inside = (dx < spec.size_x) & (dy < spec.size_y) & (o[:, 2] >= z0) & (o[:, 2] < z0 + spec.thickness)
            if inside.sum() < spec.min_molecules:
                continue
            sel = mol[inside].copy()
            shift = np.array([x0, y0, z0])
            sel -= shift
            # Whole molecules: bring each molecule next to its O in the periodic frame.
            sel[:, :, 0] -= np.floor(sel[:, 0:1, 0] / lx) * lx
            sel[:, :, 1] -= np.floor(sel[:, 0:1, 1] / ly) * ly
            candidates.append(sel.reshape(-1, 3))
    if len(candidates) > spec.windows_per_frame:
        keep = rng.choice(len(candidates), spec.windows_per_frame, replace=False)
        candidates = [candidates[i] for i in sorted(keep)]
    return candidates


def _save_frames(frames: MDFrames, path: Path) -> None:
    with atomic_path(path, ".npz") as tmp:
        np.savez_compressed(
            tmp,
            positions=frames.positions,
            cell=np.asarray(frames.cell),
            times_ps=frames.times_ps,
            run_json=np.asarray(json.dumps(asdict(frames.run))),
        )


def _load_frames(path: Path) -> MDFrames:
    with np.load(path) as z:
        run = MDRun(**json.loads(str(z["run_json"])))
        return MDFrames(run, z["positions"], tuple(z["cell"]), z["times_ps"])  # type: ignore[arg-type]


def make_water_pool(
    out: str | os.PathLike | None,
    cache_dir: str | os.PathLike,
    runs: Sequence[MDRun] | None = None,
    spec: WindowSpec = WindowSpec(),
    seed: int = 0,
    overwrite: bool = False,
) -> Generator[Progress, None, StructurePool]:
    """Run (or reuse cached) MD runs, cut windows, and write the pool to ``out``.

    Yields progress; returns the :class:`StructurePool`. MD frames of finished runs
    are cached in ``cache_dir`` so an interrupted job resumes where it stopped.
    """
    runs = list(runs if runs is not None else default_runs(seed))
    cache = Path(cache_dir)
    all_frames: list[MDFrames] = []
    for k, run in enumerate(runs):
        path = cache / f"{run.name}_{run.production_ps:g}ps.npz"
        if path.exists():
            try:
                all_frames.append(_load_frames(path))
                yield Progress("MD runs", k + 1, len(runs))
                continue
            except Exception:  # noqa: BLE001 - a damaged cache entry is simply redone
                path.unlink()
        gen = run_water_md(run)
        while True:
            try:
                yield next(gen)
            except StopIteration as stop:
                frames = stop.value
                break
        _save_frames(frames, path)
        all_frames.append(frames)
        yield Progress("MD runs", k + 1, len(runs))

    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    items = []
    for k, frames in enumerate(all_frames):
        run = frames.run
        for f, water in enumerate(frames.positions):
            for win in cut_windows(water, frames.cell, spec, rng):
                n = len(win) // 3
                numbers = np.tile(np.array([8, 1, 1], np.uint8), n)
                items.append(
                    (
                        win,
                        numbers,
                        {
                            "surface": SURFACE_CODES[run.wall],
                            "temperature": run.temperature,
                            "md_waters": run.n_waters,
                            "n_waters": n,
                            "run": k,
                            "frame": f,
                        },
                    )
                )
        yield Progress("cutting windows", k + 1, len(all_frames))
    attrs = {
        "kind": "water windows",
        "surface_codes": SURFACE_CODES,
        "window": asdict(spec),
        "runs": [asdict(r) for r in runs],
        "seed": seed,
        "made_by": "hydrafm pool water",
    }
    pool = StructurePool.from_structures(items, (spec.size_x, spec.size_y, spec.thickness), attrs)
    if out is not None:
        pool.save(out, overwrite=overwrite)
    return pool
