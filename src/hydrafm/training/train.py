"""Training the structure network: a generator yielding progress, resumable, early-stopping.

``train(...)`` yields :class:`~hydrafm.progress.Progress` per batch and
:class:`EpochStats` per epoch, and returns the path of the best checkpoint. The last
epoch's state (weights, optimizer, epoch, best loss, RNG) is kept next to it as
``<name>.last.pt`` so an interrupted run resumes where it stopped. On a CUDA GPU the
forward pass runs in bfloat16 autocast.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Generator, Sequence

import numpy as np
import torch

from ..progress import Progress, drive
from ..simulate.dataset import AFMDataset
from ..models.cells import cell_loss
from ..models.checkpoint import ModelInfo, inherit_settings, load_checkpoint, save_checkpoint
from ..models.preprocess import normalize_stack
from ..models.unet import StructureUNet, UNetConfig
from .augment import Degradations, degrade, random_crop

__all__ = ["TrainConfig", "EpochStats", "train", "pick_device", "usable_device", "split_by_shard", "split_by_run", "VAL_RUNS"]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (stored in the checkpoint's provenance)."""

    epochs: int = 30
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 1e-5
    crop: int | None = 64  # train on random crops (px); None = whole stacks
    patience: int = 6  # epochs without a better validation loss before stopping
    seed: int = 0
    device: str = "auto"
    normalization: str = "stack-zscore"
    sigma: float = 0.35  # Å, width of the label blobs
    positive_weight: float = 10.0  # MSE weight 1 + w·target: atoms count more than empty background
    label_depth: float | None = None  # Å: only atoms this close to the top get targets (None: all)
    freeze_encoder: bool = False  # fine-tuning: train only the decoder and the head
    epoch_scores: bool = False  # per-label precision/recall/F1 on the validation samples every epoch
    augment: Degradations = field(default_factory=Degradations)  # experiment-like degradations (training only)


@dataclass(frozen=True)
class EpochStats:
    """One finished epoch."""

    epoch: int
    epochs: int
    train_loss: float
    val_loss: float
    best_val_loss: float
    improved: bool
    seconds: float
    device: str
    scores: dict | None = None  # per-label scores on the validation samples (``epoch_scores``)


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA if available, else Apple MPS, else CPU; or the named device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA GPU is available")
    return dev


def usable_device(name: str = "auto") -> tuple[torch.device, str | None]:
    """The device to use and a notice when it had to fall back to the CPU.

    Runs a tiny 3D convolution on the chosen device; any failure (no such device,
    driver errors, unsupported operations) falls back to the CPU with the reason.
    """
    try:
        dev = pick_device(name)
        if dev.type != "cpu":
            conv = torch.nn.Conv3d(1, 2, 3, padding=1).to(dev)
            with torch.no_grad():
                float(conv(torch.ones(1, 1, 4, 8, 8, device=dev)).sum().cpu())
        return dev, None
    except Exception as exc:  # noqa: BLE001 - any failure means: use the CPU and say why
        return torch.device("cpu"), f"device {name!r} failed a quick test ({type(exc).__name__}: {exc}); using the CPU"


def split_by_shard(ds: AFMDataset, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Hold out whole trailing shards for validation: ``(train indices, val indices)``."""
    n_val_shards = max(1, math.ceil(len(ds.shards) * val_fraction)) if len(ds.shards) > 1 else 0
    if n_val_shards == 0:
        raise ValueError(f"{ds.folder}: need at least 2 shards to hold some out for validation")
    cut = int(ds._starts[len(ds.shards) - n_val_shards])
    idx = np.arange(len(ds))
    return idx[:cut], idx[cut:]


#: MD runs held out for validation by default: Au and Pt, 250 waters, 260 K (see water_pool.default_runs)
VAL_RUNS = (4, 13)


def split_by_run(ds: AFMDataset, run_of_structure: np.ndarray, val_runs: Sequence[int] = VAL_RUNS):
    """Split a water dataset by the MD run its window came from: no frame is in both sets.

    ``run_of_structure`` maps pool index → run (the pool's ``info["run"]``).
    """
    sources = np.concatenate([np.load(p)["source"] for p in ds.shards])
    if np.any(sources < 0):
        raise ValueError(f"{ds.folder}: samples without a single source structure; split by shard instead")
    runs = np.asarray(run_of_structure)[sources]
    val = np.isin(runs, list(val_runs))
    idx = np.arange(len(ds))
    return idx[~val], idx[val]


def _batch(samples, cfg: TrainConfig, rng: np.random.Generator | None, crop: int | None, multiple: int = 8):
    """Normalised (and, with ``rng``, degraded by :func:`~.augment.degrade`) tensors of one batch.

    Every sample is cut to one common size, a multiple of ``multiple`` px: ``crop``
    when given (random windows in training), else the largest size all samples share
    (centred windows), so stacks of different sizes can share a batch.
    """
    common = min(min(s.stack.shape[-2:]) for s in samples)
    size = min(crop, common) if crop else common
    size -= size % multiple
    if size < multiple:
        raise ValueError(f"a training stack is smaller than {multiple} px on the model's grid")
    xs, ys = [], []
    for s in samples:
        x = normalize_stack(s.stack, cfg.normalization)
        y = np.asarray(s.maps, dtype=np.float32)
        if rng is not None and (crop or x.shape[-2:] != (size, size)):
            x, y = random_crop(x, y, size, rng)
        elif x.shape[-2:] != (size, size):
            r, c = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
            x, y = x[..., r : r + size, c : c + size], y[..., r : r + size, c : c + size]
        xs.append(np.ascontiguousarray(x))
        ys.append(np.ascontiguousarray(y))
    x, y = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
    if rng is not None:
        x, y = degrade(x, y, rng, cfg.augment)
    return x[:, None], y


def train(
    dataset: AFMDataset,
    out: str | Path,
    config: TrainConfig = TrainConfig(),
    model_config: UNetConfig = UNetConfig(),
    init_from: str | Path | None = None,
    train_indices: Sequence[int] | None = None,
    val_indices: Sequence[int] | None = None,
    resume: bool = True,
    max_batches_per_epoch: int | None = None,
    val_dataset: AFMDataset | None = None,
) -> Generator[Progress | EpochStats, None, Path]:
    """Train (or fine-tune from ``init_from``) on ``dataset``; the best model goes to ``out``.

    Validation uses ``val_indices`` of ``dataset``, or of ``val_dataset`` when that is
    given (all of it when ``val_indices`` is None).
    """
    out = Path(out)
    dataset.sigma, dataset.label_depth = config.sigma, config.label_depth
    last = out.with_name(out.stem + ".last.pt")
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    if val_dataset is not None:
        val_dataset.sigma, val_dataset.label_depth = config.sigma, config.label_depth
        train_indices = np.arange(len(dataset)) if train_indices is None else train_indices
        val_indices = np.arange(len(val_dataset)) if val_indices is None else val_indices
    elif train_indices is None or val_indices is None:
        train_indices, val_indices = split_by_shard(dataset)
    train_indices, val_indices = np.asarray(train_indices), np.asarray(val_indices)
    if len(train_indices) == 0 or len(val_indices) == 0:
        raise ValueError("training needs both training and validation samples")

    st = dataset.settings
    info = ModelInfo(config=model_config, pixel_size=st.pixel_size, dz=st.dz, normalization=config.normalization)
    model = StructureUNet(model_config)
    if init_from is not None:
        base, base_info, _ = load_checkpoint(init_from)
        if base_info.config != model_config:
            model_config = base_info.config
            model = StructureUNet(model_config)
            info.config = model_config
        model.load_state_dict(base.state_dict())
        info.provenance["initialised_from"] = str(init_from)
        inherit_settings(info, base_info)
    model.to(device)
    if config.freeze_encoder:
        for part in (model.enc, model.pools, model.bottom):
            for p in part.parameters():
                p.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay)
    start_epoch, best, stale = 0, math.inf, 0
    if resume and last.exists():
        model_r, _, state = load_checkpoint(last)
        if state is not None:
            model.load_state_dict(model_r.state_dict())
            opt.load_state_dict(state["optimizer"])
            start_epoch, best, stale = state["epoch"] + 1, state["best"], state["stale"]
            rng.bit_generator.state = state["rng"]
    info.provenance.update(
        {
            "dataset": str(dataset.folder),
            "dataset_manifest": dataset.manifest,
            "train_samples": int(len(train_indices)),
            "val_samples": int(len(val_indices)),
            "val_dataset": str((val_dataset or dataset).folder),
            "train_config": {k: (asdict(v) if hasattr(v, "__dataclass_fields__") else v)
                             for k, v in asdict(config).items()},
        }
    )
    loss_fn = structure_loss(model_config, config.positive_weight)
    n_batches = math.ceil(len(train_indices) / config.batch_size)
    if max_batches_per_epoch:
        n_batches = min(n_batches, max_batches_per_epoch)
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        model.train()
        total, count = 0.0, 0
        for b, samples in enumerate(dataset.batches(config.batch_size, rng, train_indices)):
            if b >= n_batches:
                break
            x, y = _batch(samples, config, rng, config.crop, 2**model_config.levels)
            x, y = x.to(device), y.to(device)
            loss = train_step(model, model, opt, x, y, loss_fn, device)
            total += loss * len(samples)
            count += len(samples)
            yield Progress(f"epoch {epoch + 1}/{config.epochs}", b + 1, n_batches)
        val = evaluate_loss(model, val_dataset or dataset, val_indices, config, device, loss_fn)
        improved = val < best
        if improved:
            best, stale = val, 0
            info.provenance.update({"epochs_trained": epoch + 1, "best_val_loss": best})
            save_checkpoint(out, model, info)
        else:
            stale += 1
        save_checkpoint(last, model, info, {"optimizer": opt.state_dict(), "epoch": epoch, "best": best,
                                            "stale": stale, "rng": rng.bit_generator.state})
        scores = None
        if config.epoch_scores:
            from ..predict.evaluate import evaluate_dataset

            scores = drive(evaluate_dataset(val_dataset or dataset, (model, info), val_indices, device=device),
                           show=False).summary()
            model.train()
        yield EpochStats(epoch + 1, config.epochs, total / max(count, 1), val, best, improved,
                         time.perf_counter() - t0, str(device), scores)
        if stale >= config.patience:
            break
    return out


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, positive_weight: float) -> torch.Tensor:
    """The maps head's loss: MSE weighted by ``1 + w·target`` (atoms count more than empty background)."""
    return ((1.0 + positive_weight * target) * (pred - target) ** 2).mean()


def structure_loss(model_config: UNetConfig, positive_weight: float):
    """The training loss ``f(output, label_maps)`` of the network's raw output for its head.

    Maps head: :func:`weighted_mse` of the sigmoid maps; cell head:
    :func:`hydrafm.models.cells.cell_loss` (its targets read from the same label maps).
    """
    if model_config.head == "cells":
        cell = model_config.cell
        return lambda out, target: cell_loss(out, target, cell)
    return lambda out, target: weighted_mse(torch.sigmoid(out.float()), target, positive_weight)


def train_step(net, model, opt, x: torch.Tensor, y: torch.Tensor, loss_fn, device: torch.device) -> float:
    """One optimiser step (bfloat16 autocast on CUDA, gradient clipping); returns the loss.

    ``net`` is what is called (a DistributedDataParallel wrapper or the model itself) and
    ``model`` whose parameters are clipped.
    """
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = net(x)
    loss = loss_fn(out.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    opt.step()
    return float(loss.detach())


@torch.no_grad()
def evaluate_loss(
    model: StructureUNet, dataset: AFMDataset, indices: np.ndarray, cfg: TrainConfig, device: torch.device,
    loss_fn=None,
) -> float:
    """Mean training loss (``loss_fn``, default the model's :func:`structure_loss`) over ``indices``
    (no augmentation, whole stacks)."""
    loss_fn = loss_fn or structure_loss(model.config, cfg.positive_weight)
    model.eval()
    total, count = 0.0, 0
    for samples in dataset.batches(cfg.batch_size, np.random.default_rng(0), indices):
        x, y = _batch(samples, cfg, None, None, 2**model.config.levels)
        total += float(loss_fn(model(x.to(device)).float(), y.to(device))) * len(samples)
        count += len(samples)
    return total / max(count, 1)
