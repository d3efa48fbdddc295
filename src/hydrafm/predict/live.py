"""Live mode: watch the instrument's folder and predict each stack again as its heights come in.

:func:`watch_and_predict` is the workflow behind ``hydrafm watch`` and the Load widget's
*Watch folder* mode. It is a generator that never blocks for long:

1. it polls the folder (:class:`~hydrafm.io.watch.FolderWatcher`) and yields a
   :class:`~hydrafm.io.watch.StackChanged` as soon as a complete frame joins a stack;
2. a stack with at least two heights is predicted again
   (:func:`~hydrafm.predict.predictor.iter_predict_maps`), one tile at a time; between
   tiles the folder is polled again, and a newer frame of the same stack cancels the
   running prediction (:class:`PredictionCancelled`) and starts a new one on the
   bigger stack;
3. each finished prediction is yielded as :class:`AtomsPredicted`.

:func:`keep_edits` merges a new prediction into atoms the user has edited: edits to
atoms that did not move survive.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator

import numpy as np
from ase import Atoms

from ..io.watch import FileProblem, FolderWatcher, StackChanged
from ..progress import Progress
from ..stack import AFMStack
from .predictor import Prediction, iter_predict_maps, resolve_model

__all__ = ["watch_and_predict", "keep_edits", "AtomsPredicted", "PredictionCancelled", "PredictionFailed",
           "StackChanged", "FileProblem"]


@dataclass(frozen=True)
class AtomsPredicted:
    """A stack's prediction finished.

    Attributes
    ----------
    name
        The stack's name.
    atoms
        The atoms (``label``, ``confidence``), Å in the stack's frame.
    prediction
        The label maps, for another threshold.
    stack
        The stack that was predicted (all its heights at the time).
    seconds
        How long the prediction took.
    finished_at
        Wall-clock time (``time.time()``) it finished.
    """

    name: str
    atoms: Atoms
    prediction: Prediction
    stack: AFMStack
    seconds: float
    finished_at: float

    @property
    def n_heights(self) -> int:
        """Heights of the stack that was predicted."""
        return self.stack.n_heights


@dataclass(frozen=True)
class PredictionCancelled:
    """A running prediction of stack ``name`` was dropped because a newer frame arrived."""

    name: str
    n_heights: int


@dataclass(frozen=True)
class PredictionFailed:
    """Predicting stack ``name`` failed; ``message`` is one line. Watching goes on."""

    name: str
    message: str


@dataclass
class _Run:
    name: str
    stack: AFMStack
    steps: Generator[Progress, None, Prediction]
    started: float


def watch_and_predict(
    folder: str | Path,
    model: Any = "water",
    *,
    channel: str | int | None = None,
    direction: str = "forward",
    z_order: str = "auto",
    device: Any = "cpu",
    threshold: float | None = None,
    predict: bool = True,
    interval: float = 0.1,
    settle: float = 0.3,
    give_up: float = 30.0,
    stop: Callable[[], bool] | None = None,
    until_idle: float | None = None,
    depth: bool | None = None,
) -> Generator[Any, None, dict[str, tuple[AFMStack, Atoms | None]]]:
    """Watch ``folder``; yield stack changes, progress and predictions as they happen.

    Parameters
    ----------
    folder
        The instrument's output folder.
    model
        Shipped model name, checkpoint file, or a loaded ``(net, info)``.
    channel, direction, z_order
        How frames are read, as for :func:`~hydrafm.io.load_stack`.
    device
        Torch device for the network.
    threshold
        Minimum confidence of an atom; ``None`` = the model's recommended threshold.
    depth
        ``False``: every O and ion at z = 0; ``None``: each molecule at its depth (the depth
        network, :func:`~hydrafm.predict.depth.resolve_depth`).
    predict
        False: only watch and stack, never predict.
    interval
        Seconds between polls of the folder while nothing is being predicted.
    settle, give_up
        See :class:`~hydrafm.io.watch.FolderWatcher`.
    stop
        Called between steps; watching ends when it returns True.
    until_idle
        End by itself once no file has changed for this many seconds, no file is
        waiting and every stack's prediction is up to date (``None``: never).

    Yields
    ------
    StackChanged, FileProblem, Progress, PredictionCancelled, PredictionFailed, AtomsPredicted

    Returns
    -------
    dict
        ``{stack name: (stack, latest atoms or None)}`` when watching ends.
    """
    watcher = FolderWatcher(folder, channel, direction, z_order=z_order, settle=settle, give_up=give_up)
    net = None
    if predict:
        yield Progress("loading model", 0, 1)
        net = resolve_model(model, device)
        yield Progress("loading model", 1, 1)
    model_name = "in-memory" if isinstance(model, tuple) else str(model)
    stacks: dict[str, AFMStack] = {}
    atoms: dict[str, Atoms | None] = {}
    queued: dict[str, AFMStack] = {}  # newest stack of each name that waits for a prediction
    run: _Run | None = None
    try:
        while stop is None or not stop():
            polled = time.monotonic()
            for rec in watcher.poll():
                yield rec
                if not isinstance(rec, StackChanged):
                    continue
                stacks[rec.name] = rec.stack
                atoms.setdefault(rec.name, None)
                if net is None or rec.stack.n_heights < 2:
                    continue
                queued.pop(rec.name, None)
                queued[rec.name] = rec.stack  # most recent last
                if run is not None and run.name == rec.name:
                    run.steps.close()
                    yield PredictionCancelled(run.name, run.stack.n_heights)
                    run = None
            if run is None and queued:
                name = next(reversed(queued))  # the stack that changed last: the one being measured
                stack = queued.pop(name)
                run = _Run(name, stack, iter_predict_maps(stack, net, device, depth=depth),
                           time.perf_counter())
            if run is None:
                idle = time.time() - watcher.last_change
                if until_idle is not None and idle >= until_idle and not watcher.waiting:
                    break
                time.sleep(max(0.0, interval - (time.monotonic() - polled)))
                continue
            try:
                yield next(run.steps)
            except StopIteration as done:
                found = done.value.atoms(threshold)
                found.info["model"] = model_name
                atoms[run.name] = found
                took = time.perf_counter() - run.started
                yield AtomsPredicted(run.name, found, done.value, run.stack, took, time.time())
                run = None
            except Exception as exc:  # noqa: BLE001 - one stack's failure must not end the watch
                message = " ".join(str(exc).split()) or type(exc).__name__
                yield PredictionFailed(run.name, f"{run.name}: prediction failed: {message}")
                run = None
    finally:
        if run is not None:
            run.steps.close()
    return {name: (stack, atoms.get(name)) for name, stack in stacks.items()}


def _pairs(a: np.ndarray, b: np.ndarray, tolerance: float) -> list[tuple[int, int]]:
    """Closest-first one-to-one pairs ``(i, j)`` of points ``a[i]``, ``b[j]`` within ``tolerance``."""
    if not len(a) or not len(b):
        return []
    from scipy.spatial import cKDTree

    dist = cKDTree(a).sparse_distance_matrix(cKDTree(b), tolerance, output_type="ndarray")
    order = np.argsort(dist["v"], kind="stable")
    used_a, used_b, out = set(), set(), []
    for i, j in zip(dist["i"][order], dist["j"][order]):
        if i not in used_a and j not in used_b:
            used_a.add(int(i))
            used_b.add(int(j))
            out.append((int(i), int(j)))
    return out


def _same_element_pairs(a: Atoms, b: Atoms, tolerance: float) -> list[tuple[int, int]]:
    """:func:`_pairs` of the atoms of ``a`` and ``b``, element by element (an O is never an H's partner)."""
    sa, sb = np.asarray(a.get_chemical_symbols()), np.asarray(b.get_chemical_symbols())
    out = []
    for element in set(sa) & set(sb):
        ia, ib = np.flatnonzero(sa == element), np.flatnonzero(sb == element)
        out += [(int(ia[i]), int(ib[j])) for i, j in _pairs(a.positions[ia], b.positions[ib], tolerance)]
    return out


def _same_atoms(a: Atoms, b: Atoms) -> list[tuple[int, int]]:
    """Pairs of atoms of ``a`` and ``b`` at the same place (1e-3 Å) with the same label."""
    la, lb = np.asarray(a.arrays["label"]).astype(str), np.asarray(b.arrays["label"]).astype(str)
    return [(i, j) for i, j in _same_element_pairs(a, b, 1e-3) if la[i] == lb[j]]


def keep_edits(before: Atoms, shown: Atoms, after: Atoms, tolerance: float = 0.5) -> Atoms:
    """The atoms to show after a new prediction, keeping the user's edits to atoms that did not move.

    Parameters
    ----------
    before
        The previous prediction, as it was first shown.
    shown
        The atoms shown now: ``before`` with the user's edits (atoms moved, relabelled,
        deleted or added by hand).
    after
        The new prediction.
    tolerance
        An atom of ``after`` within this many Å of one of ``before`` of the same element is
        the same atom, one that did not move.

    Returns
    -------
    Atoms
        ``after``, except that atoms the user edited stay as the user left them (a deleted
        atom stays deleted, a moved or relabelled one keeps its place and label) where the
        prediction did not move them; atoms the user added are kept. Atoms the network
        moved, new atoms and atoms it no longer finds follow the new prediction.
    """
    same = _same_atoms(before, shown)
    untouched = {i for i, _ in same}
    by_user = sorted(set(range(len(shown))) - {j for _, j in same})
    drop = {j for i, j in _same_element_pairs(before, after, tolerance) if i not in untouched}
    kept = [j for j in range(len(after)) if j not in drop]
    merged = after[kept]
    merged.extend(_by_hand(shown[by_user], merged))
    merged.info.update(after.info)
    return merged


def _by_hand(atoms: Atoms, like: Atoms) -> Atoms:
    """``atoms`` with only ``label`` and ``confidence`` kept, and ``like``'s other per-atom columns
    (molecule ids) set to −1: atoms placed or changed by hand belong to no predicted molecule."""
    out = Atoms(symbols=atoms.get_chemical_symbols(), positions=atoms.positions)
    out.new_array("label", np.asarray(atoms.arrays["label"]).astype("<U6"))
    confidence = atoms.arrays.get("confidence", np.ones(len(atoms)))
    out.new_array("confidence", np.asarray(confidence, dtype=np.float64))
    for name, values in like.arrays.items():
        if name not in out.arrays and np.issubdtype(values.dtype, np.integer) and values.ndim == 1:
            out.new_array(name, np.full(len(atoms), -1, dtype=values.dtype))
    return out
