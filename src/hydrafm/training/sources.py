"""Training data for fine-tuning, from three sources, all with the interface :func:`train` uses.

(a) a folder (or list) of structure files (xyz, extxyz, POSCAR, cif … anything ase reads),
    simulated on the fly (torch engine, or ppafm): :func:`simulate_structures`;
(b) stacks paired with their (corrected) atoms, e.g. experimental scans and the edited
    Points layer: :func:`stack_atom_samples`;
(c) dataset shards made by ``hydrafm simulate``: :class:`~hydrafm.simulate.dataset.AFMDataset`.

(a) and (b) give a :class:`MemoryDataset`. Bad data (no atoms, atoms outside the scan,
elements the network does not know, a single-frame stack) raises :class:`TrainingDataError`
naming the file or the pair, before any training starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Generator, Iterator, Sequence

import numpy as np

from ..progress import Progress
from ..simulate.dataset import Sample, ScanSimulators, draw_tip
from ..simulate.labels import atom_labels, label_index, label_maps, within_top
from ..simulate.settings import TipRanges
from ..stack import AFMStack

__all__ = ["MemoryDataset", "TrainingDataError", "simulate_structures", "stack_atom_samples",
           "structure_files", "STRUCTURE_SUFFIXES"]

STRUCTURE_SUFFIXES = (".xyz", ".extxyz", ".cif", ".vasp", ".poscar", ".pdb", ".traj", ".json")
KNOWN = {1, 8, 11, 19}  # H, O, Na, K: what the network labels


class TrainingDataError(ValueError):
    """Training data that cannot be used (the message names the item and the reason)."""


@dataclass(frozen=True)
class GridSettings:
    """The grid the samples are on: what :func:`train` needs to know about a dataset."""

    pixel_size: float
    dz: float
    n_heights: int


class MemoryDataset:
    """Samples in memory with the :class:`~hydrafm.simulate.dataset.AFMDataset` interface.

    ``samples`` hold stacks ``(n_heights, ny, nx)`` on a square grid of ``pixel_size``
    whose first pixel centre is at ``(pixel_size/2, pixel_size/2)``, positions in Å in
    that frame and label indices; maps are rendered on demand (``sigma``,
    ``label_depth`` as in AFMDataset).
    """

    def __init__(self, samples: Sequence[Sample], settings: GridSettings, name: str, manifest: dict | None = None):
        if not samples:
            raise TrainingDataError(f"{name}: no training samples")
        self.samples = list(samples)
        self.settings = settings
        self.folder = Path(name)
        self.manifest = dict(manifest or {"kind": "memory", "n": len(samples)})
        self.sigma = 0.35
        self.label_depth: float | None = None
        self.shards: list[Path] = []

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        s = self.samples[i]
        pos, lab = s.positions, s.labels
        if self.label_depth is not None and len(pos):
            seen = within_top(pos, self.label_depth)
            pos, lab = pos[seen], lab[seen]
        px = self.settings.pixel_size
        maps = label_maps(pos, lab, s.stack.shape[1:], px, (px / 2, px / 2), self.sigma)
        return Sample(s.stack, maps, s.positions, s.labels)

    def batches(self, batch_size: int, rng: np.random.Generator | None = None,
                indices: np.ndarray | None = None) -> Iterator[list[Sample]]:
        """Batches in random order."""
        rng = rng or np.random.default_rng()
        idx = np.arange(len(self)) if indices is None else np.asarray(indices)
        order = rng.permutation(idx)
        for k in range(0, len(order), batch_size):
            yield [self[int(i)] for i in order[k : k + batch_size]]


def structure_files(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The structure files of a folder (sorted, by suffix), or the given files."""
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in STRUCTURE_SUFFIXES
                           or f.name.upper() in ("POSCAR", "CONTCAR"))
            if not files:
                raise TrainingDataError(f"{p}: no structure files ({', '.join(STRUCTURE_SUFFIXES)}, POSCAR)")
            return files
        return [p]
    return [Path(s) for s in source]


def _read_structure(path: Path):
    from ..io.errors import AFMFileError
    from ..io.xyz import read_structure

    try:
        return read_structure(path)
    except AFMFileError as exc:
        raise TrainingDataError(str(exc)) from None


def simulate_structures(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    per_structure: int = 8,
    seed: int = 0,
    settings=None,
    engine: str = "torch",
    device: str = "cpu",
    tips: TipRanges | None = None,
) -> Generator[Progress, None, MemoryDataset]:
    """Simulate each structure ``per_structure`` times (random tip, rotation, position) → a MemoryDataset.

    Only H, O, Na and K are simulated and labelled; other atoms (a substrate) are left
    out, as in the training data. Each draw rotates the structure by a random angle about
    z, centres its water/ion part in the scan window with a random offset of up to 2 Å,
    and keeps the atoms inside the window. ``tips`` (a
    :class:`~hydrafm.simulate.settings.TipRanges`): draw each stack's tip stiffness, charge,
    quadrupole, distance, amplitude and true height step like an experiment, as the shipped
    models were trained; ``None``: the settings' tip, only its distance and tilt drawn.
    """
    from ..simulate.settings import SimulationSettings

    settings = settings or SimulationSettings()
    files = structure_files(source)
    structures = []
    for f in files:
        atoms = _read_structure(f)
        keep = np.isin(atoms.numbers, list(KNOWN))
        if not keep.any():
            raise TrainingDataError(f"{f}: no H, O, Na or K atoms to learn from")
        pos, numbers = atoms.positions[keep], atoms.numbers[keep]
        try:
            atom_labels(pos, numbers)
        except ValueError as exc:
            raise TrainingDataError(f"{f}: {exc}") from None
        structures.append((f, pos - pos.mean(axis=0), numbers))
    sims = ScanSimulators(settings, engine, device)
    rng = np.random.default_rng(seed)
    samples = []
    total = len(structures) * per_structure
    yield Progress("simulating structures", 0, total)
    half = settings.scan_size / 2
    margin = 0.5
    for f, pos, numbers in structures:
        for _ in range(per_structure):
            a = rng.uniform(0, 2 * np.pi)
            rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
            p = pos @ rot.T + np.array([half, half, 0]) + np.append(rng.uniform(-2, 2, 2), 0)
            inside = np.all((p[:, :2] > margin) & (p[:, :2] < settings.scan_size - margin), axis=1)
            p, z = _whole_molecules(p, numbers, inside)
            if len(p) == 0:
                continue
            tip, scan = draw_tip(settings, tips, rng)
            stack = sims.get(scan).simulate(p, z, tip, name=str(f))
            labels = label_index(atom_labels(p, z))
            samples.append(Sample(stack.data, None, p, labels))  # type: ignore[arg-type]
            yield Progress("simulating structures", len(samples), total)
    grid = GridSettings(settings.pixel_size, settings.dz, settings.n_heights)
    return MemoryDataset(samples, grid, f"structures:{Path(files[0]).parent}",
                         {"kind": "structures", "n": len(samples), "files": [str(f) for f in files],
                          "per_structure": per_structure, "seed": seed, "settings": settings.to_dict(),
                          **({"tips": tips.to_dict()} if tips is not None else {})})


def _whole_molecules(p: np.ndarray, numbers: np.ndarray, inside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep inside atoms, dropping H whose O was cut (so every H keeps its O)."""
    keep = inside.copy()
    o = np.flatnonzero((numbers == 8) & inside)
    for h in np.flatnonzero((numbers == 1) & inside):
        d = np.linalg.norm(p[o] - p[h], axis=1) if len(o) else np.array([np.inf])
        keep[h] = d.min() <= 1.3
    return p[keep], numbers[keep]


def stack_atom_samples(
    pairs: Sequence[tuple[AFMStack, object]],
    pixel_size: float,
    dz: float,
    n_heights: int,
    names: Sequence[str] | None = None,
) -> MemoryDataset:
    """Stacks with their (corrected) atoms → samples on the model's grid.

    Each stack is brought to the model's heights and pixel size exactly as prediction
    does; the atoms (``ase.Atoms`` with a ``label`` array, positions in Å in the
    stack's frame, z relative) move with it.
    """
    from scipy.ndimage import zoom

    from ..io.xyz import LABELS
    from ..predict.predictor import select_heights

    names = list(names or [f"pair {k + 1}" for k in range(len(pairs))])
    samples = []
    for (stack, atoms), name in zip(pairs, names):
        if stack.n_heights < 2:
            raise TrainingDataError(f"{name}: the stack has one frame; the network needs several heights")
        labels = np.asarray(atoms.arrays.get("label", atoms.get_chemical_symbols())).astype(str)
        if len(labels) == 0:
            raise TrainingDataError(f"{name}: no atoms")
        bad = sorted(set(labels) - set(LABELS))
        if bad:
            raise TrainingDataError(f"{name}: unknown atom labels {bad}; expected {list(LABELS)}")
        frames = select_heights(stack, n_heights, dz)
        ny, nx = frames.shape[1:]
        py, px = stack.pixel_size
        corner = np.array([stack.origin[1] - px / 2, stack.origin[0] - py / 2])
        xy = atoms.positions[:, :2] - corner
        size = np.array([nx * px, ny * py])
        inside = np.all((xy >= 0) & (xy <= size), axis=1)
        if not inside.any():
            raise TrainingDataError(f"{name}: none of the atoms lies on the stack (wrong layer pair?)")
        if inside.mean() < 0.5:
            raise TrainingDataError(f"{name}: {int((~inside).sum())} of {len(inside)} atoms lie outside the "
                                    "stack (wrong layer pair?)")
        new = (max(8, round(ny * py / pixel_size)), max(8, round(nx * px / pixel_size)))
        frames = zoom(frames, (1, new[0] / ny, new[1] / nx), order=1).astype(np.float32)
        scale = np.array([new[1] / (nx * px), new[0] / (ny * py)]) * pixel_size  # ≈ 1; exact grid
        pos = np.column_stack([xy[inside] * scale, atoms.positions[inside, 2]])
        samples.append(Sample(frames, None, pos, label_index(labels[inside])))  # type: ignore[arg-type]
    return MemoryDataset(samples, GridSettings(pixel_size, dz, n_heights), "stacks+atoms",
                         {"kind": "stacks+atoms", "n": len(samples), "names": names})
