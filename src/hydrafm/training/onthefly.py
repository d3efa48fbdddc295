"""Training on the fly: every batch is simulated on the training device from the structure pools.

No dataset on disk: each batch draws structures from the pools (random symmetry, crop
window, tip and instrument draws), simulates them with the torch probe-particle engine on
the training device, renders the label maps there, degrades the stacks like an
experiment, and trains. A fixed validation set from held-out structures is simulated once
(seeded) and cached; it scores every epoch. Progress, early stopping, atomic checkpoints,
resume, and ``minutes`` (stop cleanly with the best checkpoint) as in :func:`~.train.train`.

Under ``torchrun --nproc_per_node N`` (and ``--nnodes``) the same function runs with
DistributedDataParallel: each rank draws its own structures from its own seed; rank 0
validates and writes checkpoints.

Only torch, numpy and scipy are needed here (no ase, napari or OpenCL): it runs on a bare
GPU node from a checkout.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Generator, Sequence

import numpy as np
import torch

from ..models.checkpoint import (
    ModelInfo,
    inherit_settings,
    load_checkpoint,
    save_checkpoint,
    transfer_weights,
)
from ..models.preprocess import normalize_stack_torch
from ..models.unet import StructureUNet, UNetConfig
from ..progress import Progress
from ..simulate.engine import TipBatch, TorchSimulator
from ..simulate.settings import SimulationSettings, TipRanges, scan_settings
from .augment import Degradations, degrade
from .train import EpochStats, pick_device, structure_loss, train_step

__all__ = ["TipRanges", "Degradations", "OnTheFlyConfig", "StructureSource", "BatchMaker", "train_on_the_fly",
           "degrade", "ReplayBuffer"]

N_LABELS = 6  # O, Na, K, H_up, H_flat, H_down (hydrafm.io.xyz.LABELS)


@dataclass(frozen=True)
class OnTheFlyConfig:
    """Everything that defines an on-the-fly training run (stored in the checkpoint)."""

    pools: tuple[str, ...] = ("water",)  # shipped pool names or .npz paths
    pool_weights: tuple[float, ...] | None = None
    batch_size: int = 16
    crop: int = 64  # simulated window in px (at the model's pixel size)
    steps_per_epoch: int = 100
    epochs: int = 1000
    minutes: float | None = None  # stop cleanly after this much wall time
    cpu_minutes: float | None = None  # ... or after this much CPU time of this process (equal-compute comparisons)
    val_size: int = 96
    lr: float = 1e-3
    lr_final: float | None = None  # cosine decay from lr to this over the run's budget (None: constant lr)
    weight_decay: float = 1e-5
    patience: int = 20
    seed: int = 0
    sigma: float = 0.35
    positive_weight: float = 10.0
    label_depth: float | None = 2.0  # only atoms this close to the top get targets
    sim_share: float | None = None  # None: a fresh batch every step; else replay (see ReplayBuffer)
    buffer: int = 1024  # replay: simulated stacks kept
    layer_depth: float | None = None  # water windows: keep only molecules this close to the top
    normalization: str = "stack-zscore"
    tips: TipRanges = field(default_factory=TipRanges)
    degrade: Degradations = field(default_factory=Degradations)
    settings: SimulationSettings = field(default_factory=SimulationSettings)  # nominal scan (model grid)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


# ---------------------------------------------------------------------------------------------- data
class StructureSource:
    """Structures of one pool to draw from (a training or a held-out part)."""

    def __init__(self, name: str, indices: np.ndarray | None = None, pool=None) -> None:
        from ..structures.pool import StructurePool

        self.name = name
        path = Path(name) if name.endswith(".npz") else _pool_path(name)
        self.pool = pool if pool is not None else StructurePool.load(path)
        self.indices = np.arange(len(self.pool)) if indices is None else np.asarray(indices)
        if len(self.indices) == 0:
            raise ValueError(f"pool {name}: no structures selected")
        self.single = self.pool.window[0] <= 0  # single hydrates, composed into windows
        self._sub = self.pool.subset(self.indices) if self.single else None

    def draw(self, rng: np.random.Generator, window: float, layer_depth: float | None):
        """``(positions Å in a window × window frame, atomic numbers)``."""
        from ..simulate.dataset import _d4, top_layer

        if self.single:
            from ..structures.hydrates import compose_hydrate_window

            pos, numbers, _ = compose_hydrate_window(self._sub, rng, (window, window))
            return pos, numbers
        i = int(self.indices[rng.integers(len(self.indices))])
        pos, numbers = self.pool.arrays(i)
        w = float(self.pool.window[0])
        if layer_depth is not None and len(numbers) % 3 == 0 and np.all(numbers.reshape(-1, 3) == [8, 1, 1]):
            pos, numbers = top_layer(pos, numbers, layer_depth)
        return _d4(pos, w, int(rng.integers(8))), numbers


def _pool_path(name: str) -> Path:
    from ..paths import pool_path

    return pool_path(name)


def default_split(name: str, pool=None) -> tuple[StructureSource, StructureSource]:
    """Training and held-out sources of a shipped pool, by construction (no structure in both).

    ``water``: MD runs 4 and 13 held out (``training.train.VAL_RUNS``); ``hydrates``: clusters
    2000–2400 held out; the ice-like pool (a ``family`` column): ``structures.ice.held_out_mask``
    (bilayers on Pt(111), 8-ring-rich networks, hydrates with n = 5); otherwise the last 10 %.
    """
    from ..structures.pool import StructurePool
    from .train import VAL_RUNS

    if pool is None:
        pool = StructurePool.load(Path(name) if name.endswith(".npz") else _pool_path(name))
    idx = np.arange(len(pool))
    if "run" in pool.info and name == "water":
        val = np.isin(np.asarray(pool.info["run"]), VAL_RUNS)
    elif name == "hydrates":
        val = idx >= 2000
    elif "family" in pool.info:  # the ice-like pool: whole families (and one hydrate size) held out
        from ..structures.ice import held_out_mask

        val = held_out_mask(pool)
    else:
        val = idx >= int(0.9 * len(pool))
    return StructureSource(name, idx[~val], pool), StructureSource(name, idx[val], pool)


class BatchMaker:
    """Draw, simulate, label (and degrade) batches on a torch device."""

    def __init__(self, cfg: OnTheFlyConfig, sources: Sequence[StructureSource], device: torch.device,
                 weights: Sequence[float] | None = None) -> None:
        self.cfg = cfg
        self.sources = list(sources)
        w = np.asarray(weights if weights is not None else [1.0] * len(self.sources), float)
        self.weights = w / w.sum()
        self.device = device
        s = cfg.settings
        self.pixel = s.pixel_size
        self.window = cfg.crop * self.pixel
        self._sims: dict[tuple[int, float], TorchSimulator] = {}

    def simulator(self, amplitude: float, dz: float) -> TorchSimulator:
        scan = scan_settings(self.cfg.settings, amplitude, dz)
        key = (scan.df_steps, round(dz, 4))
        if key not in self._sims:
            # a 1 Å margin keeps the relaxed probe inside the (exactly sized) force-field box
            s = replace(scan, n_pixels=self.cfg.crop, scan_size=self.window,
                        lateral_pad=max(self.cfg.settings.lateral_pad, 1.0))
            sim = TorchSimulator(s, device=self.device, ppafm_grid=False)
            # on a GPU the relaxation's steps are compiled (2.8× faster on an H200, docs/structure-network.md;
            # ~1 min of compiling once per run) unless HYDRAFM_FUSED=0
            sim.fused = sim.fused or (self.device.type == "cuda" and os.environ.get("HYDRAFM_FUSED") != "0")
            self._sims[key] = sim
        return self._sims[key]

    def draw(self, rng: np.random.Generator, n: int):
        """``n`` structures cut to the crop window: lists of positions, numbers, label indices."""
        from ..simulate.labels import atom_labels, label_index

        out_pos, out_num, out_lab = [], [], []
        big = self.cfg.settings.scan_size
        while len(out_pos) < n:
            src = self.sources[int(rng.choice(len(self.sources), p=self.weights))]
            pos, numbers = src.draw(rng, big, self.cfg.layer_depth)
            if len(numbers) == 0:
                continue
            span = max(float(src.pool.window[0]), big) if not src.single else big
            off = rng.uniform(0, max(span - self.window, 0.0), size=2)
            p = pos - np.array([off[0], off[1], 0.0])
            margin = 4.0  # atoms this far beyond the window still act on the probe
            keep = np.all((p[:, :2] > -margin) & (p[:, :2] < self.window + margin), axis=1)
            seen = np.all((p[:, :2] > 0) & (p[:, :2] < self.window), axis=1)
            if not seen.any():
                continue
            p, z = p[keep], numbers[keep]
            try:
                lab = label_index(atom_labels(p, z))
            except ValueError:
                continue
            out_pos.append(p)
            out_num.append(z)
            out_lab.append(lab)
        return out_pos, out_num, out_lab

    def plan(self, rng: np.random.Generator, n: int, nominal: bool = False) -> dict:
        """The CPU half of a batch: structures, labels, tips, amplitude and height step (numpy only)."""
        cfg = self.cfg
        s = cfg.settings
        if nominal:
            amp, dz = s.df_steps * s.dz, s.dz
        else:
            amp, dz = cfg.tips.draw_scan(rng)
        pos, num, lab = self.draw(rng, n)
        tips = [cfg.tips.draw(rng, s.probe_length) for _ in range(n)]
        return {"amp": amp, "dz": dz, "pos": pos, "num": num, "lab": lab, "tips": tips,
                "seed": int(rng.integers(2**62))}

    def simulate(self, plan: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The device half: clean Δf stacks ``(n, Z, H, W)`` and label maps ``(n, 6, H, W)``."""
        sim = self.simulator(plan["amp"], plan["dz"])
        tb = TipBatch.from_tips(plan["tips"], sim.settings, self.device)
        with torch.no_grad():
            x = sim(plan["pos"], plan["num"], tb)  # (n, Z, H, W)
            x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0).clamp(-1e3, 1e3)
            return x, self.maps(plan["pos"], plan["lab"])

    def finish(self, x: torch.Tensor, maps: torch.Tensor, rng: np.random.Generator | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Degrade (unless ``rng`` is None) and normalise → ``(stacks (n, 1, Z, H, W), maps)``."""
        with torch.no_grad():
            if rng is not None:
                x, maps = degrade(x, maps, rng, self.cfg.degrade)
            x = normalize_stack_torch(x, self.cfg.normalization)
        return x[:, None], maps

    def render(self, plan: dict, degrade_stacks: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Simulate, label, degrade, normalise → ``(stacks (n, 1, Z, H, W), maps (n, 6, H, W))``."""
        x, maps = self.simulate(plan)
        return self.finish(x, maps, np.random.default_rng(plan["seed"]) if degrade_stacks else None)

    def make(self, rng: np.random.Generator, n: int, degrade_stacks: bool = True,
             nominal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch ``(stacks (n, 1, Z, H, W) normalised, maps (n, 6, H, W))`` on the device."""
        return self.render(self.plan(rng, n, nominal), degrade_stacks)

    def plans(self, rng: np.random.Generator, n: int):
        """Endless batch plans; the next one is drawn in a thread while this one is used."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1) as pool:
            nxt = pool.submit(self.plan, rng, n)
            while True:
                plan = nxt.result()
                nxt = pool.submit(self.plan, rng, n)
                yield plan

    def maps(self, positions: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> torch.Tensor:
        """Gaussian label maps ``(B, 6, H, W)`` on the device (peak 1 per atom; see ``simulate.labels``)."""
        cfg = self.cfg
        B, n = len(positions), cfg.crop
        N = max(1, max(len(p) for p in positions))
        kw = dict(device=self.device, dtype=torch.float32)
        # assembled in numpy, one copy each to the device (per-sample copies are launches on a GPU)
        xy_np = np.full((B, N, 2), -1e3, np.float32)
        onehot_np = np.zeros((B, N, N_LABELS), np.float32)
        for b, (p, lab) in enumerate(zip(positions, labels)):
            if not len(p):
                continue
            vis = np.ones(len(p), bool)
            if cfg.label_depth is not None:
                vis = p[:, 2] >= p[:, 2].max() - cfg.label_depth
            k = int(vis.sum())
            xy_np[b, :k] = p[vis, :2]
            onehot_np[b, np.arange(k), lab[vis].astype(np.int64)] = 1.0
        xy, onehot = torch.as_tensor(xy_np, **kw), torch.as_tensor(onehot_np, **kw)
        c = (torch.arange(n, **kw) + 0.5) * self.pixel  # pixel centres
        gx = torch.exp(-0.5 * ((c[None, None, :] - xy[..., 0:1]) / cfg.sigma) ** 2)  # (B, N, W)
        gy = torch.exp(-0.5 * ((c[None, None, :] - xy[..., 1:2]) / cfg.sigma) ** 2)  # (B, N, H)
        return torch.einsum("bnl,bny,bnx->blyx", onehot, gy, gx).clamp_(max=1.0)


class ReplayBuffer:
    """The last ``capacity`` clean simulated stacks and their maps, on the training device.

    On a CPU, simulating a 64 × 64 stack costs ~20× a 2D U-Net training step, so fresh batches
    alone leave the network idle. With a replay buffer each stack is used several times, each time
    under new random rotations, flips, drift, noise and contrast (:func:`degrade`), and the share
    of time spent simulating is held at ``OnTheFlyConfig.sim_share``.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.size = 0
        self._next = 0

    def push(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.x is None:
            self.x = x.new_zeros((self.capacity, *x.shape[1:]))
            self.y = y.new_zeros((self.capacity, *y.shape[1:]))
        x, y = x[-self.capacity :], y[-self.capacity :]  # more than fits: the newest
        idx = (self._next + torch.arange(len(x), device=self.x.device)) % self.capacity
        self.x[idx], self.y[idx] = x, y
        self._next = (self._next + len(x)) % self.capacity
        self.size = min(self.size + len(x), self.capacity)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.size == 0:
            raise ValueError("the replay buffer is empty")
        idx = torch.as_tensor(rng.choice(self.size, size=n, replace=self.size < n), device=self.x.device)
        return self.x[idx], self.y[idx]


# ---------------------------------------------------------------------------------------------- training
def _dist():
    """``(rank, world size, local rank)``; initialises torch.distributed under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("HYDRAFM_DIST_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def validation_set(cfg: OnTheFlyConfig, sources: Sequence[StructureSource], device: torch.device,
                   cache: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed validation batches: simulated once from held-out structures (seeded), then cached."""
    key = hashlib.sha256(json.dumps({"cfg": {k: v for k, v in cfg.to_dict().items()
                                            if k in ("pools", "crop", "val_size", "seed", "sigma", "label_depth",
                                                     "layer_depth", "normalization", "tips", "settings")},
                                     "sources": [(s.name, len(s.indices)) for s in sources]},
                                    sort_keys=True).encode()).hexdigest()[:16]
    path = cache / f"val-{key}.pt" if cache is not None else None
    if path is not None and path.exists():
        try:
            d = torch.load(path, map_location="cpu")
            return d["x"], d["y"]
        except Exception:  # noqa: BLE001 - unreadable cache: simulate again
            pass
    maker = BatchMaker(cfg, sources, device)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 999]))
    xs, ys = [], []
    for k in range(0, cfg.val_size, 16):
        x, y = maker.make(rng, min(16, cfg.val_size - k), degrade_stacks=False, nominal=True)
        xs.append(x.cpu())
        ys.append(y.cpu())
    x, y = torch.cat(xs), torch.cat(ys)
    if path is not None:
        from .._atomic import atomic_path

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, ".pt") as tmp:
            torch.save({"x": x, "y": y}, tmp)
    return x, y


def train_on_the_fly(
    out: str | Path,
    cfg: OnTheFlyConfig = OnTheFlyConfig(),
    model_config: UNetConfig = UNetConfig(),
    device: str = "auto",
    init_from: str | Path | None = None,
    resume: bool = True,
    cache: Path | None = None,
    head: str | None = None,
    cell: int = 4,
) -> Generator[Progress | EpochStats, None, Path]:
    """Train the structure network on batches simulated on the device; the best model goes to ``out``.

    With ``init_from``, the network is the checkpoint's (``model_config`` is not used), unless
    ``head`` (``"maps"`` or ``"cells"``, with ``cell``) asks for another head: it then starts
    from the checkpoint's weights wherever both networks have them (:func:`~hydrafm.models.checkpoint.transfer_weights`).

    Yields :class:`Progress` per batch and :class:`EpochStats` per epoch (rank 0 only under
    torchrun); returns the path of the best checkpoint. ``<out>.last.pt`` keeps the state
    for resuming.
    """
    out = Path(out)
    last = out.with_name(out.stem + ".last.pt")
    rank, world, local = _dist()
    dev = pick_device(device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    s = cfg.settings
    if cfg.crop % (2**model_config.levels):
        raise ValueError(f"crop {cfg.crop} px must be a multiple of {2 ** model_config.levels}")
    if model_config.n_heights != s.n_heights:
        model_config = replace(model_config, n_heights=s.n_heights)
    splits = [default_split(p) for p in cfg.pools]
    train_src = [a for a, _ in splits]
    val_src = [b for _, b in splits]
    torch.manual_seed(cfg.seed)
    model = StructureUNet(model_config)
    info = ModelInfo(config=model_config, pixel_size=s.pixel_size, dz=s.dz, normalization=cfg.normalization)
    if init_from is not None:
        from ..models.registry import model_path

        base, base_info, _ = load_checkpoint(model_path(str(init_from)))
        model = base
        info.config = model_config = base_info.config
        if head is not None and (head, cell) != (base_info.config.head, base_info.config.cell):
            # a new head on the checkpoint's encoder (and the decoder levels both heads have)
            info.config = model_config = replace(base_info.config, head=head, cell=cell)
            model = StructureUNet(model_config)
            transfer_weights(base, model)
        info.provenance["initialised_from"] = str(init_from)
        inherit_settings(info, base_info)
    model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_epoch, best, stale, spent = 0, math.inf, 0, 0.0
    if resume and last.exists():
        model_r, _, state = load_checkpoint(last, map_location=dev)
        if state is None or not _same_run(state.get("otf_config"), cfg):
            raise ValueError(f"{last} holds a different training run; choose another output or delete it")
        model.load_state_dict(model_r.state_dict())
        opt.load_state_dict(state["optimizer"])
        start_epoch, best, stale = state["epoch"] + 1, state["best"], state["stale"]
        spent = float(state.get("seconds", 0.0))
    _set_lr(opt, cfg.lr)  # a resumed run may continue with another learning rate
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    vx = vy = None
    if rank == 0:
        vx, vy = validation_set(cfg, val_src, dev, cache)
    maker = BatchMaker(cfg, train_src, dev, cfg.pool_weights)
    info.provenance.update({
        "on_the_fly": cfg.to_dict(),
        "train_structures": {src.name: int(len(src.indices)) for src in train_src},
        "val_structures": {src.name: int(len(src.indices)) for src in val_src},
        "world_size": world,
        "device": str(dev),
    })
    t_start, cpu0 = time.perf_counter(), time.process_time()
    deadline = None if cfg.minutes is None else t_start + 60 * cfg.minutes

    loss_fn = structure_loss(model_config, cfg.positive_weight)

    samples = 0
    replay = ReplayBuffer(cfg.buffer) if cfg.sim_share is not None else None
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, rank, epoch]))
        net.train()
        total, count, sim_s, fresh, fresh_s = 0.0, 0, 0.0, 0, 0.0
        stop = False
        plans = maker.plans(rng, cfg.batch_size)
        for b in range(cfg.steps_per_epoch):
            ts = time.perf_counter()
            if cfg.lr_final is not None:
                done = (epoch - start_epoch + b / cfg.steps_per_epoch) / max(cfg.epochs - start_epoch, 1)
                _set_lr(opt, cosine_lr(cfg, _budget_used(cfg, done, ts - t_start, time.process_time() - cpu0)))
            if replay is None:
                x, y = maker.render(next(plans))
                fresh += len(x)
            else:
                if replay.size < cfg.batch_size or fresh_s <= cfg.sim_share * (ts - t0):
                    replay.push(*maker.simulate(next(plans)))
                    fresh += cfg.batch_size
                    fresh_s += time.perf_counter() - ts
                x, y = maker.finish(*replay.sample(rng, cfg.batch_size), rng)
            sim_s += time.perf_counter() - ts
            total += train_step(net, model, opt, x, y, loss_fn, dev) * len(x)
            count += len(x)
            samples += len(x) * world
            if rank == 0:
                yield Progress(f"epoch {epoch + 1}", b + 1, cfg.steps_per_epoch)
            stop = (deadline is not None and time.perf_counter() > deadline) or (
                cfg.cpu_minutes is not None and time.process_time() - cpu0 > 60 * cfg.cpu_minutes)
            stop = _agree(stop, world, dev)
            if stop:
                break
        plans.close()  # ends the drawing thread
        seconds = time.perf_counter() - t0
        improved = False
        if rank == 0:
            val = _val_loss(model, vx, vy, dev, loss_fn)
            improved = val < best
            if improved:
                best, stale = val, 0
                info.provenance.update({"epochs_trained": epoch + 1, "best_val_loss": best,
                                        "samples_seen": int(samples), "seconds": spent + time.perf_counter() - t_start})
                save_checkpoint(out, model, info)
            else:
                stale += 1
            save_checkpoint(last, model, info, {"optimizer": opt.state_dict(), "epoch": epoch, "best": best,
                                                "stale": stale, "otf_config": cfg.to_dict(),
                                                "seconds": spent + time.perf_counter() - t_start})
            yield OnTheFlyEpoch(epoch + 1, cfg.epochs, total / max(count, 1), val, best, improved, seconds,
                                str(dev), None, count * world / max(seconds, 1e-9), sim_s / max(seconds, 1e-9),
                                fresh * world / max(seconds, 1e-9), time.process_time() - cpu0,
                                opt.param_groups[0]["lr"])
        stop = stop or _agree(stale >= cfg.patience, world, dev)
        if stop:
            break
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        # tear the group down here: left to interpreter exit, gloo's threads can abort the process
        # ("terminate called without an active exception", seen once in a fresh-clone test run)
        dist.destroy_process_group()
    return out


@dataclass(frozen=True)
class OnTheFlyEpoch(EpochStats):
    """:class:`EpochStats` plus the throughput of this epoch."""

    samples_per_s: float = 0.0
    simulation_share: float = 0.0  # fraction of the epoch's time spent making batches
    new_samples_per_s: float = 0.0  # freshly simulated stacks (lower than samples_per_s with replay)
    cpu_seconds: float = 0.0  # CPU time of this process so far (all its threads): the compute spent
    lr: float = 0.0  # learning rate at the end of the epoch


def _budget_used(cfg: OnTheFlyConfig, epochs_used: float, wall_s: float, cpu_s: float) -> float:
    """Fraction (0–1) of this invocation's budget spent: the first of epochs, minutes, CPU minutes to end."""
    used = [epochs_used]
    if cfg.minutes is not None:
        used.append(wall_s / (60 * cfg.minutes))
    if cfg.cpu_minutes is not None:
        used.append(cpu_s / (60 * cfg.cpu_minutes))
    return min(max(used), 1.0)


def cosine_lr(cfg: OnTheFlyConfig, used: float) -> float:
    """Learning rate after ``used`` (0–1) of the budget: cosine from ``cfg.lr`` to ``cfg.lr_final``."""
    end = cfg.lr if cfg.lr_final is None else cfg.lr_final
    return end + (cfg.lr - end) * 0.5 * (1 + math.cos(math.pi * min(max(used, 0.0), 1.0)))


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def _same_run(saved: dict | None, cfg: OnTheFlyConfig) -> bool:
    """A saved run continues under ``cfg`` when only its length (epochs, minutes, patience), its
    learning-rate schedule or its degradations changed (options added since the run was saved take
    their defaults)."""
    if saved is None:
        return False
    saved = {**OnTheFlyConfig().to_dict(), **saved}
    may_change = ("epochs", "minutes", "cpu_minutes", "patience", "lr", "lr_final", "degrade")
    return {k: v for k, v in saved.items() if k not in may_change} == {
        k: v for k, v in cfg.to_dict().items() if k not in may_change}


def _agree(flag: bool, world: int, dev: torch.device) -> bool:
    """True on every rank when rank 0 says so (all ranks stop together)."""
    if world <= 1:
        return bool(flag)
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=dev if dev.type == "cuda" else "cpu")
    dist.broadcast(t, 0)
    return bool(t.item() > 0)


@torch.no_grad()
def _val_loss(model, vx, vy, dev, loss_fn, batch: int = 16) -> float:
    model.eval()
    total, n = 0.0, 0
    for k in range(0, len(vx), batch):
        x, y = vx[k : k + batch].to(dev), vy[k : k + batch].to(dev)
        total += float(loss_fn(model(x).float(), y)) * len(x)
        n += len(x)
    model.train()
    return total / max(n, 1)
