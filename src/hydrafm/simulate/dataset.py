"""Training data on disk: shards of simulated stacks with their atoms, and a loader.

A dataset is a folder::

    dataset.json          what made it (kind, pool, settings, seed, shard size, n)
    shard_00000.npz       `shard_size` samples each
    shard_00001.npz
    ...

Each shard holds ``stacks`` float16 ``(k, n_heights, ny, nx)`` (frame 0 closest,
AFMStack convention, Δf in Hz) and the atoms of every sample (``positions`` Å in the
scan frame, ``labels`` indices into :data:`~hydrafm.io.xyz.LABELS`, ``offsets``),
plus the random draws (``distance``, ``tilt``, ``source``). Label maps are rendered
by the loader, so their width can change without re-simulating.

:func:`make_dataset` is resumable and deterministic: shard ``i`` is drawn from
``SeedSequence([seed, i])`` alone, finished shards are skipped, and each shard is
written atomically.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Generator, Iterator

import numpy as np

from .._atomic import atomic_path
from ..io.xyz import LABELS
from ..paths import POOLS
from ..progress import Progress
from ..structures.pool import BadStructureError, StructurePool
from .settings import SampledTip, SimulationSettings, TipRanges, scan_settings
from .simulators import make_simulator
from .labels import atom_labels, label_index, label_maps, within_top

__all__ = ["make_dataset", "AFMDataset", "Sample", "draw_structure", "KINDS"]

KINDS = tuple(POOLS)  # one kind per shipped pool: water, hydrates, ice, ice-md
MANIFEST = "dataset.json"


def _d4(positions: np.ndarray, size: float, k: int) -> np.ndarray:
    """Apply one of the 8 symmetries of the square window (k in 0..7) to x, y."""
    p = positions.copy()
    x, y = p[:, 0].copy(), p[:, 1].copy()
    for _ in range(k % 4):  # rotate by 90° about the window centre
        x, y = size - y, x
    if k >= 4:
        x = size - x
    p[:, 0], p[:, 1] = x, y
    return p


def top_layer(positions: np.ndarray, numbers: np.ndarray, depth: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep only the water molecules (O, H, H) whose O lies within ``depth`` Å of the highest O."""
    numbers = np.asarray(numbers)
    if len(numbers) % 3 or len(positions) != len(numbers) or not np.all(numbers.reshape(-1, 3) == [8, 1, 1]):
        raise ValueError("top_layer needs water stored as O, H, H triplets")
    mol = np.asarray(positions).reshape(-1, 3, 3)
    keep = mol[:, 0, 2] >= mol[:, 0, 2].max() - depth
    return mol[keep].reshape(-1, 3), numbers.reshape(-1, 3)[keep].reshape(-1)


def draw_structure(
    kind: str,
    pool: StructurePool,
    rng: np.random.Generator,
    window: float = 25.0,
    layer_depth: float | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """One structure to simulate: ``(positions Å, atomic numbers, pool index or -1)``.

    ``water``: a pool window under a random symmetry of the square; with
    ``layer_depth``, only the molecules within that many Å of the highest O (a
    single top layer, as a constant-height scan sees it). ``hydrates``: 1–3 pool
    hydrates placed at random in the window. ``ice``: a window of the ice pool
    (:mod:`hydrafm.structures.ice`) drawn like ``water``; ``ice-md``: the same, annealed
    (:mod:`hydrafm.structures.ice_md`).
    """
    if kind in ("water", "ice", "ice-md"):
        i = int(rng.integers(len(pool)))
        pos, numbers = pool.arrays(i)
        if pool.window[0] <= 0:
            raise ValueError("this pool holds single hydrates, not windows; simulate it as kind 'hydrates'")
        if abs(window - pool.window[0]) > 1e-6:
            raise ValueError(f"the pool's window is {pool.window[0]:g} Å but the scan is {window:g} Å")
        if layer_depth is not None:
            pos, numbers = top_layer(pos, numbers, layer_depth)
        return _d4(pos, window, int(rng.integers(8))), numbers, i
    if kind == "hydrates":
        from ..structures.hydrates import compose_hydrate_window

        pos, numbers, used = compose_hydrate_window(pool, rng, (window, window))
        return pos, numbers, used[0] if len(used) == 1 else -1
    raise ValueError(f"unknown dataset kind {kind!r}; choose one of {KINDS}")


def structure_group(kind: str, pool: StructurePool, source: int) -> str:
    """The family a drawn structure belongs to, for per-family scores: the ice pool's ``family``,
    ``water-<surface>`` for MD windows, else the dataset kind."""
    if source >= 0 and "family" in pool.info:
        return str(pool.info["family"][source])
    if source >= 0 and "surface" in pool.info:
        return f"water-{pool.info['surface'][source]}"
    return kind


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path, ".npz") as tmp:
        np.savez(tmp, **arrays)


def _shard_ok(path: Path, k: int) -> bool:
    try:
        with np.load(path) as z:
            return z["stacks"].shape[0] == k and len(z["offsets"]) == k + 1
    except Exception:  # noqa: BLE001 - unreadable shard: redo it
        return False


def make_dataset(
    out: str | os.PathLike,
    n: int,
    kind: str,
    pool: StructurePool,
    settings: SimulationSettings = SimulationSettings(),
    seed: int = 0,
    shard_size: int = 64,
    pool_name: str = "",
    layer_depth: float | None = None,
    engine: str = "torch",
    device: str = "cpu",
    tips: TipRanges | None = None,
) -> Generator[Progress, None, Path]:
    """Simulate ``n`` stacks of ``kind`` structures from ``pool`` into the folder ``out``.

    ``engine`` is the simulator (``torch``, the default, or ``ppafm``) and ``device`` the
    torch device it runs on. ``tips``: draw every stack's tip and scan from these
    experiment-like ranges (stiffness, charge, quadrupole, amplitude, true height step; the
    shards then record each draw); ``None`` keeps the settings' tip and draws only the
    distance (``settings.closest_distance``) and the tilt.

    Yields :class:`Progress` per stack; returns the folder. Re-running with the
    same arguments resumes; different arguments in an existing folder raise
    ``ValueError`` instead of mixing two datasets.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; choose one of {KINDS}")
    if n < 1 or shard_size < 1:
        raise ValueError("n and shard_size must be positive")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "kind": kind,
        "n": int(n),
        "seed": int(seed),
        "shard_size": int(shard_size),
        "settings": settings.to_dict(),
        "pool": {"name": pool_name, "structures": len(pool), "atoms": int(pool.offsets[-1])},
        "labels": list(LABELS),
        "format": 1,
        "engine": engine,
    }
    if layer_depth is not None:
        manifest["layer_depth"] = float(layer_depth)
    if tips is not None:
        manifest["tips"] = tips.to_dict()
    mpath = out / MANIFEST
    if mpath.exists():
        old = json.loads(mpath.read_text())
        old.setdefault("engine", "ppafm")  # datasets made before the torch engine existed
        if old != json.loads(json.dumps(manifest)):
            raise ValueError(
                f"{out} already holds a different dataset ({mpath.name} differs); choose another folder"
            )
    else:
        mpath.write_text(json.dumps(manifest, indent=1))

    n_shards = (n + shard_size - 1) // shard_size
    sims = ScanSimulators(settings, engine, device)
    done = 0
    for s in range(n_shards):
        k = min(shard_size, n - s * shard_size)
        path = out / f"shard_{s:05d}.npz"
        if path.exists() and _shard_ok(path, k):
            done += k
            yield Progress("simulating stacks", done, n)
            continue
        rng = np.random.default_rng(np.random.SeedSequence([seed, s]))
        stacks, pos_l, lab_l, offsets, dist, tilt, source, group = [], [], [], [0], [], [], [], []
        drawn: dict[str, list] = {key: [] for key in TIP_DRAWS} if tips is not None else {}
        rejected = 0
        while len(stacks) < k:
            pos, numbers, src = draw_structure(kind, pool, rng, settings.scan_size, layer_depth)
            tip, scan = draw_tip(settings, tips, rng)
            try:
                stack = sims.get(scan).simulate(pos, numbers, tip, name=f"shard {s} sample {len(stacks)}")
                labels = label_index(atom_labels(pos, numbers))
            except (BadStructureError, ValueError):
                rejected += 1
                if rejected > 10 * k + 10:
                    raise
                continue
            stacks.append(stack.data.astype(np.float16))
            pos_l.append(pos.astype(np.float32))
            lab_l.append(labels)
            offsets.append(offsets[-1] + len(pos))
            dist.append(tip.distance)
            tilt.append(tip.tilt_xy)
            source.append(src)
            group.append(structure_group(kind, pool, src))
            if drawn:
                for key, v in tip_draws(tip, scan).items():
                    drawn[key].append(v)
            done += 1
            yield Progress("simulating stacks", done, n)
        _write_npz(
            path,
            {
                "stacks": np.stack(stacks),
                "positions": np.concatenate(pos_l),
                "labels": np.concatenate(lab_l),
                "offsets": np.asarray(offsets, dtype=np.int64),
                "distance": np.asarray(dist, dtype=np.float32),
                "tilt": np.asarray(tilt, dtype=np.float32),
                "source": np.asarray(source, dtype=np.int64),
                "group": np.asarray(group, dtype="<U32"),
                "rejected": np.asarray(rejected),
                **{key: np.asarray(v, dtype=np.float32) for key, v in drawn.items()},
            },
        )
    return out


#: what a shard records of each stack's tip and scan when they are drawn from :class:`TipRanges`
TIP_DRAWS = ("k_lateral", "charge", "quadrupole", "dz", "amplitude")


def draw_tip(settings: SimulationSettings, tips: TipRanges | None,
             rng: np.random.Generator) -> tuple[SampledTip, SimulationSettings]:
    """One stack's tip and the settings it is scanned with (``tips`` None: the settings' own tip)."""
    if tips is None:
        return SampledTip.draw(settings, rng), settings
    amplitude, dz = tips.draw_scan(rng)
    return tips.draw(rng, settings.probe_length), scan_settings(settings, amplitude, dz)


def tip_draws(tip: SampledTip, scan: SimulationSettings) -> dict[str, float]:
    """The :data:`TIP_DRAWS` of one stack."""
    return {"k_lateral": float(tip.k_lateral if tip.k_lateral is not None else scan.k_lateral),
            "charge": float(tip.charge if tip.charge is not None else scan.tip_charge),
            "quadrupole": float(tip.quadrupole), "dz": float(scan.dz),
            "amplitude": float(scan.df_steps * scan.dz)}


class ScanSimulators:
    """One simulator per scan setting (amplitude and height step), made when first needed."""

    def __init__(self, settings: SimulationSettings, engine: str, device: str) -> None:
        self.settings, self.engine, self.device = settings, engine, device
        self._sims: dict[tuple, object] = {}

    def get(self, scan: SimulationSettings):
        key = (scan.df_steps, round(scan.dz, 6))
        if key not in self._sims:
            self._sims[key] = make_simulator(scan, self.engine, self.device)
        return self._sims[key]


@dataclass
class Sample:
    """One training sample: the stack, its label maps and its atoms."""

    stack: np.ndarray  # (n_heights, ny, nx) float32, Δf Hz, frame 0 closest
    maps: np.ndarray  # (len(LABELS), ny, nx) float32
    positions: np.ndarray  # (n_atoms, 3) Å, scan frame
    labels: np.ndarray  # (n_atoms,) indices into LABELS


class AFMDataset:
    """Indexable view of a dataset folder made by :func:`make_dataset`.

    ``ds[i]`` is a :class:`Sample`; label maps are rendered with ``sigma`` Å
    Gaussians. With ``label_depth`` set, only the atoms within that many Å of the
    structure's highest atom get a blob in the maps (the atoms a scan can see; the same
    rule as the metrics' ``top``); ``Sample.positions`` always holds every atom. Shards are loaded whole and the most recent ones kept in memory;
    :meth:`batches` walks shards in random order for fast epochs.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        sigma: float = 0.35,
        cache_shards: int = 2,
        label_depth: float | None = None,
    ) -> None:
        self.folder = Path(folder)
        mpath = self.folder / MANIFEST
        if not mpath.exists():
            raise FileNotFoundError(f"{self.folder}: no {MANIFEST}; not a HydrAFM dataset (make one with "
                                    "`hydrafm simulate`)")
        self.manifest = json.loads(mpath.read_text())
        self.settings = SimulationSettings.from_dict(self.manifest["settings"])
        self.sigma = float(sigma)
        self.label_depth = label_depth
        self.shards = sorted(self.folder.glob("shard_*.npz"))
        self._sizes = []
        for p in self.shards:
            with np.load(p) as z:
                self._sizes.append(int(z["offsets"].shape[0] - 1))
        self._starts = np.concatenate([[0], np.cumsum(self._sizes)]).astype(np.int64)
        self._cache: dict[int, dict[str, np.ndarray]] = {}
        self._cache_shards = max(1, cache_shards)

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def complete(self) -> bool:
        """True when every shard the manifest asks for is on disk."""
        return len(self) == int(self.manifest["n"])

    def _shard(self, s: int) -> dict[str, np.ndarray]:
        if s not in self._cache:
            if len(self._cache) >= self._cache_shards:
                self._cache.pop(next(iter(self._cache)))
            with np.load(self.shards[s]) as z:
                self._cache[s] = {k: z[k] for k in z.files}
        return self._cache[s]

    def __getitem__(self, i: int) -> Sample:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} out of range for a dataset of {len(self)}")
        i %= len(self)
        s = int(np.searchsorted(self._starts, i, side="right") - 1)
        j = i - int(self._starts[s])
        z = self._shard(s)
        a, b = z["offsets"][j], z["offsets"][j + 1]
        stack = z["stacks"][j].astype(np.float32)
        pos, lab = z["positions"][a:b], z["labels"][a:b]
        st = self.settings
        mpos, mlab = pos, lab
        if self.label_depth is not None and len(pos):
            seen = within_top(pos, self.label_depth)
            mpos, mlab = pos[seen], lab[seen]
        maps = label_maps(mpos, mlab, stack.shape[1:], st.pixel_size, (st.pixel_size / 2, st.pixel_size / 2),
                          self.sigma)
        return Sample(stack, maps, pos, lab)

    def draws(self) -> dict[str, np.ndarray]:
        """Per-sample random draws of the whole dataset: ``distance`` (closest probe above the top
        atom, Å), ``source`` (pool index) and ``group`` (the structure's family); with random
        tips (``manifest["tips"]``) also :data:`TIP_DRAWS` (stiffness N/m, charge e, quadrupole
        e·Å², true height step Å, amplitude Å)."""
        extra = TIP_DRAWS if "tips" in self.manifest else ()
        out: dict[str, list] = {key: [] for key in ("distance", "source", "group", *extra)}
        for p in self.shards:
            with np.load(p) as z:
                k = len(z["offsets"]) - 1
                out["distance"].append(z["distance"])
                out["source"].append(z["source"])
                out["group"].append(z["group"] if "group" in z.files else np.full(k, self.manifest["kind"]))
                for key in extra:
                    out[key].append(z[key])
        return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}

    def batches(
        self, batch_size: int, rng: np.random.Generator | None = None, indices: np.ndarray | None = None
    ) -> Iterator[list[Sample]]:
        """Batches of samples, shard by shard in random order (shuffled within each shard)."""
        rng = rng or np.random.default_rng()
        idx = np.arange(len(self)) if indices is None else np.asarray(indices)
        shard_of = np.searchsorted(self._starts, idx, side="right") - 1
        order = []
        for s in rng.permutation(len(self.shards)):
            members = idx[shard_of == s]
            order.extend(rng.permutation(members).tolist())
        for k in range(0, len(order), batch_size):
            yield [self[i] for i in order[k : k + batch_size]]
