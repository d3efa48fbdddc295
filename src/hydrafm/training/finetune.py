"""Fine-tuning: one workflow for the CLI (``hydrafm finetune``) and the napari panel.

:func:`finetune` trains a copy of a base model (shipped or user) on new data and saves
the result as ``<name>.pt`` in the user data folder, with a model card ``<name>.md``
next to it; the base model is only read. It yields the progress of training
(:class:`~hydrafm.progress.Progress`, and :class:`~hydrafm.training.train.EpochStats`
with per-label scores each epoch). Stopping keeps the best checkpoint so far and
``<name>.last.pt``; calling it again with ``resume=True`` continues the run.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, replace
from pathlib import Path
from typing import Generator

import numpy as np

from .._atomic import atomic_path
from ..models.checkpoint import load_checkpoint, save_checkpoint
from ..models.registry import SHIPPED_MODELS, model_path, user_models_dir
from ..progress import Progress
from .train import EpochStats, TrainConfig, split_by_shard, train

__all__ = ["finetune", "random_split", "check_model_name", "ModelExistsError"]

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ModelExistsError(FileExistsError):
    """A user model of that name exists already (resume it or choose another name)."""


def check_model_name(name: str) -> str:
    """A safe file name for a user model, not a shipped model's name."""
    if not NAME.match(name or "") or name.endswith(".last") or name.endswith(".pt"):
        raise ValueError(f"{name!r} is not a usable model name: letters, digits, '.', '_' and '-' only")
    if name in SHIPPED_MODELS:
        raise ValueError(f"{name!r} is a shipped model's name; choose another")
    return name


def random_split(n: int, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random ``(train, validation)`` indices with at least one sample in each."""
    if n < 2:
        raise ValueError(f"fine-tuning needs at least 2 samples (one to validate on), got {n}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(np.clip(round(n * val_fraction), 1, n - 1))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def finetune(
    data,
    name: str,
    base: str | Path = "water",
    config: TrainConfig = TrainConfig(epochs=20, patience=6, epoch_scores=True),
    val_fraction: float = 0.2,
    resume: bool = False,
    out_dir: Path | None = None,
) -> Generator[Progress | EpochStats, None, Path]:
    """Fine-tune ``base`` on ``data`` (an AFMDataset or a MemoryDataset); returns the saved model's path.

    The labels follow the base model's training: where ``config.label_depth`` is None and the base
    was trained to find only the atoms near the top (``label_depth`` in its on-the-fly provenance, 2 Å
    for the shipped models), the fine-tune does the same — teaching it every atom of the structure
    instead makes it see atoms the scan cannot (docs/finetune.md). The stacks are normalised as the
    base model's were.
    """
    name = check_model_name(name)
    folder = Path(out_dir) if out_dir is not None else user_models_dir()
    out = folder / f"{name}.pt"
    last = folder / f"{name}.last.pt"
    if out.exists() and not resume:
        raise ModelExistsError(f"a model named {name!r} exists ({out}); resume it or choose another name")
    if resume and not last.exists():
        raise FileNotFoundError(f"there is no stopped run named {name!r} to resume ({last})")
    base_path = model_path(base)
    _, base_info, _ = load_checkpoint(base_path)  # fails early, naming the file, on a bad base model
    config = base_recipe(config, base_info)
    if abs(base_info.pixel_size - data.settings.pixel_size) > 1e-6 or abs(base_info.dz - data.settings.dz) > 1e-6:
        raise ValueError(f"the data's grid ({data.settings.pixel_size:.4f} Å/px, {data.settings.dz:g} Å steps) "
                         f"differs from the base model's ({base_info.pixel_size:.4f} Å/px, {base_info.dz:g} Å)")
    if getattr(data, "shards", None) and len(data.shards) > 1:
        train_idx, val_idx = split_by_shard(data, val_fraction)
    else:
        train_idx, val_idx = random_split(len(data), val_fraction, config.seed)
    folder.mkdir(parents=True, exist_ok=True)
    result = None
    gen = train(data, out, config, base_info.config, init_from=base_path, train_indices=train_idx,
                val_indices=val_idx, resume=resume)
    try:
        for rec in gen:
            if isinstance(rec, EpochStats) and rec.improved:
                result = rec
            yield rec
    finally:  # also when stopped: the best epoch so far gets its card
        gen.close()
        if out.exists() and result is not None:
            _write_card(out, base, data, config, result, len(train_idx), len(val_idx))
    return out


def base_recipe(config: TrainConfig, base_info) -> TrainConfig:
    """``config`` with the base model's label depth (where ``config`` leaves it None) and normalisation."""
    trained = base_info.provenance.get("on_the_fly") or {}
    depth = config.label_depth if config.label_depth is not None else trained.get("label_depth")
    return replace(config, label_depth=None if depth is None else float(depth),
                   normalization=base_info.normalization or config.normalization)


def _write_card(out: Path, base, data, config: TrainConfig, best: EpochStats | None, n_train: int,
                n_val: int) -> None:
    """Put the summary and metrics into the checkpoint and write ``<name>.md`` beside it."""
    model, info, _ = load_checkpoint(out)
    scores = (best.scores if best is not None else None) or info.provenance.get("metrics")
    kind = data.manifest.get("kind", "data")
    summary = f"fine-tuned from {Path(str(base)).stem} on {n_train} samples ({kind})"
    info.provenance.update({"summary": summary, "metrics": scores, "base_model": str(base)})
    if "tips" in data.manifest:  # structures simulated with experiment-like tips
        info.provenance["tips"] = data.manifest["tips"]
    save_checkpoint(out, model, info)
    lines = [f"# Model card: {out.stem}", "", summary + ".", "",
             f"- Base model: `{base}`",
             f"- Data: {kind}, {n_train} training and {n_val} validation samples "
             f"(validation held out from training, used to pick the best epoch)"
             + ("; experiment-like tips (`TipRanges`)" if "tips" in data.manifest else ""),
             f"- Epochs trained (best): {info.provenance.get('epochs_trained')}; best validation loss "
             f"{info.provenance.get('best_val_loss')}",
             f"- Settings: `{json.dumps({k: v for k, v in asdict(config).items() if k != 'augment'})}`", ""]
    if scores:
        lines += ["| label | precision | recall | F1 | true atoms |", "|---|---|---|---|---|"]
        for g, v in scores.items():
            if isinstance(v, dict):
                lines.append(f"| {g} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['true']} |")
        if "H_orientation" in scores:
            lines.append(f"\nH orientation accuracy among matched H: {scores['H_orientation']:.3f}")
        lines.append("\nScores on the validation samples at the best epoch (lateral match within 0.75 Å, "
                     "top 3 Å).")
    with atomic_path(out.with_suffix(".md"), ".md") as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")
