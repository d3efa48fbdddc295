"""Verify a structure against the scan: simulate its AFM stack at the scan's heights and compare.

Tang et al. checked their predictions by simulating AFM images of the predicted
structures and comparing them with the experiment by eye. :func:`verify_atoms`
does it for any scan: it simulates the atoms (positions in Å in the scan's frame,
z relative) with the training simulator on a square window covering the scan at
the scan's pixel size, at the scan's height steps, for one or several closest
tip–sample distances, and keeps the one most similar to the experiment.

The similarity is the mean over heights of the Pearson correlation between the
experimental and simulated frames (1 = identical up to contrast and offset);
the residual map is the difference of the per-frame z-scored images.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Generator, Sequence

import numpy as np
from ase import Atoms

from ..progress import Progress
from ..stack import AFMStack
from ..structures.pool import BadStructureError
from .settings import SampledTip, SimulationSettings
from .simulators import make_simulator

__all__ = ["Verification", "verify_atoms", "iter_verify_atoms", "frame_similarity", "ScanWindow", "scan_window",
           "on_scan_grid"]

MAX_PIXELS = 256  # simulation grid cap; larger scans are simulated coarser and resampled


@dataclass
class Verification:
    """A simulated stack on the experiment's grid, the residual, and how similar they are."""

    simulated: AFMStack  # same shape, pixel size, origin and heights as the experiment
    residual: np.ndarray  # (n, ny, nx): z-scored experiment − z-scored simulation
    similarity: float  # mean per-height Pearson correlation, −1 … 1
    per_height: np.ndarray  # (n,) the correlation of each height
    distance: float  # Å, closest probe distance above the top atom that fits best
    dropped: int = 0  # atoms left out because they overlapped another (closer than 0.8 Å)


def _zscore(frames: np.ndarray) -> np.ndarray:
    from ..models.preprocess import normalize_stack

    return normalize_stack(frames, "frame-zscore")


def frame_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each pair of frames ``(n, ny, nx)`` → ``(n,)``."""
    za, zb = _zscore(a), _zscore(b)
    return (za * zb).mean(axis=(-2, -1))


def _heights(stack: AFMStack, default_dz: float) -> np.ndarray:
    if stack.heights is not None and len(stack.heights) == stack.n_heights:
        h = np.asarray(stack.heights, dtype=np.float64)
        return h - h[0]
    return np.arange(stack.n_heights) * default_dz


@dataclass(frozen=True)
class ScanWindow:
    """The square simulation window that covers a scan, at the scan's pixel size and height steps.

    ``settings``: the simulation settings of the window (pixel count, size, heights, step);
    ``heights``: the scan's heights relative to its closest frame (Å); ``corner``: the
    window's lower-left corner in the scan's frame (x, y, z = 0), Å. Simulated pixel
    ``(i, j)`` has its centre at ``corner + ((j + 0.5) d, (i + 0.5) d)``.
    """

    settings: SimulationSettings
    heights: np.ndarray
    corner: np.ndarray

    def atoms_inside(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions in the window's frame and the mask of those laterally inside it."""
        pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3) - self.corner
        size = self.settings.scan_size
        inside = (pos[:, 0] > 0) & (pos[:, 0] < size) & (pos[:, 1] > 0) & (pos[:, 1] < size)
        return pos, inside


def scan_window(stack: AFMStack, base: SimulationSettings | None = None,
                max_pixels: int = MAX_PIXELS) -> ScanWindow:
    """The :class:`ScanWindow` of a stack: ``base`` settings with the scan's size, pixels and height steps."""
    if stack.n_heights < 1:
        raise ValueError("the stack has no frames")
    base = base or SimulationSettings()
    ny, nx = stack.data.shape[1:]
    py, px = stack.pixel_size
    size = max(ny * py, nx * px)
    n_pix = int(min(max_pixels, max(16, round(size / min(py, px)))))
    n_pix += n_pix % 2
    heights = _heights(stack, base.dz)
    steps = np.diff(heights)
    dz = float(np.median(steps)) if len(steps) else base.dz
    if dz <= 0:
        raise ValueError("the stack's heights must increase away from the sample")
    settings = replace(base, n_pixels=n_pix, scan_size=float(size), n_heights=int(round(heights[-1] / dz)) + 1,
                       dz=dz)
    # (0, 0) of the window at the scan's lower-left pixel corner
    corner = np.array([stack.origin[1] - px / 2, stack.origin[0] - py / 2, 0.0])
    return ScanWindow(settings, heights, corner)


def iter_verify_atoms(
    stack: AFMStack,
    atoms: Atoms,
    distances: Sequence[float] = (2.3, 2.6, 2.9, 3.2),
    settings: SimulationSettings | None = None,
    engine: str = "torch",
    device: str = "cpu",
) -> Generator[Progress, None, Verification]:
    """Simulate ``atoms`` under the scan for each closest distance; return the best :class:`Verification`.

    ``engine``: ``torch`` (default; runs anywhere torch does) or ``ppafm`` (the OpenCL
    reference; inside napari it runs in a separate process).
    """
    if len(atoms) == 0:
        raise ValueError("there are no atoms to simulate")
    window = scan_window(stack, settings or SimulationSettings())
    settings, heights = window.settings, window.heights
    pos, inside = window.atoms_inside(atoms.get_positions())
    pos, numbers = pos[inside], atoms.numbers[inside]
    if len(pos) == 0:
        raise ValueError("none of the atoms lies inside the scan")
    pos, numbers, dropped = _drop_overlaps(pos, numbers)
    yield Progress("simulating", 0, len(distances))
    sim = make_simulator(settings, engine, device)
    best: Verification | None = None
    failures = []
    for k, d in enumerate(distances):
        try:
            out = sim.simulate(pos, numbers, SampledTip(float(d)), name="predicted structure")
        except BadStructureError as exc:  # e.g. the probe runs into an atom at this distance
            failures.append(f"{d:g} Å: {exc}")
            yield Progress("simulating", k + 1, len(distances))
            continue
        frames = on_scan_grid(out, stack, heights)
        per = frame_similarity(stack.data, frames)
        score = float(per.mean())
        if best is None or score > best.similarity:
            simulated = AFMStack(frames.astype(np.float32), stack.pixel_size, stack.heights, stack.origin,
                                 {"channel": "df", "units": "Hz", "format": f"{engine} simulation",
                                  "scan_angle_deg": stack.scan_angle, "simulation": out.metadata["simulation"]})
            best = Verification(simulated, (_zscore(stack.data) - _zscore(frames)).astype(np.float32), score,
                                per, float(d), dropped)
        yield Progress("simulating", k + 1, len(distances))
    if best is None:
        raise ValueError("the structure could not be simulated at any distance (" + "; ".join(failures) + ")")
    return best


def _drop_overlaps(pos: np.ndarray, numbers: np.ndarray, min_distance: float = 0.8):
    """Leave out atoms closer than ``min_distance`` to a kept one (heavier atoms are kept first)."""
    from scipy.spatial import cKDTree

    order = np.argsort(-numbers, kind="stable")
    tree = cKDTree(pos)
    keep = np.zeros(len(pos), bool)
    for i in order:
        near = tree.query_ball_point(pos[i], min_distance)
        if not any(keep[j] for j in near if j != i):
            keep[i] = True
    return pos[keep], numbers[keep], int((~keep).sum())


def on_scan_grid(sim: AFMStack, stack: AFMStack, heights: np.ndarray) -> np.ndarray:
    """The simulated stack sampled at the experiment's heights and pixel centres (linear)."""
    from scipy.ndimage import map_coordinates

    ny, nx = stack.data.shape[1:]
    py, px = stack.pixel_size
    spx = sim.pixel_size[0]
    # simulated pixel (i, j) centre sits at ((i + 0.5) spx, (j + 0.5) spx) from the scan corner
    yy = ((np.arange(ny) + 0.5) * py) / spx - 0.5
    xx = ((np.arange(nx) + 0.5) * px) / spx - 0.5
    zz = heights / float(np.diff(sim.heights).mean()) if sim.n_heights > 1 else np.zeros_like(heights)
    Z, Y, X = np.meshgrid(zz, yy, xx, indexing="ij")
    return map_coordinates(sim.data, [Z, Y, X], order=1, mode="nearest")


def verify_atoms(stack: AFMStack, atoms: Atoms, distances: Sequence[float] = (2.3, 2.6, 2.9, 3.2),
                 settings: SimulationSettings | None = None, engine: str = "torch",
                 device: str = "cpu") -> Verification:
    """:func:`iter_verify_atoms` run to the end."""
    from ..progress import drive

    return drive(iter_verify_atoms(stack, atoms, distances, settings, engine, device), show=False)
