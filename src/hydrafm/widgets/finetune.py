"""The Fine-tune dock widget: transfer learning from structures, corrected scans or a dataset.

Training runs in a napari worker (the same :func:`~hydrafm.training.finetune.finetune`
generator as ``hydrafm finetune``). The panel shows batch progress, a live plot of
the training and validation loss and the per-label F1 on the validation samples per
epoch. Train becomes Stop; Stop keeps the best checkpoint so far, and Resume
continues a stopped run. The new model is saved in the user data folder with a
model card and appears in the Predict widget's model list at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    RadioButtons,
    Select,
    SpinBox,
)

from ._common import atoms_of_layer, report_error, show_progress, stack_layer_for, stack_of_layer

if TYPE_CHECKING:
    import napari

SOURCES = ("Structures folder", "Stacks + atoms in the viewer", "Dataset folder")


def _build_data(source: str, path: str, pairs: list[tuple[Any, Any]], names: list[str], base: Path,
                per_structure: int, engine: str = "torch", random_tips: bool = False):
    """Worker body, part 1: the training data (simulation yields progress)."""
    from ..models.checkpoint import load_checkpoint
    from ..simulate.dataset import AFMDataset
    from ..simulate.settings import TipRanges
    from ..training.sources import TrainingDataError, simulate_structures, stack_atom_samples

    if source == SOURCES[0]:
        if not path:
            raise TrainingDataError("Choose a folder of structure files (xyz, cif, POSCAR …).")
        # the torch engine runs in this worker thread; ppafm (OpenCL) runs in a child process
        return (yield from simulate_structures(path, per_structure, engine=engine,
                                               tips=TipRanges() if random_tips else None))
    if source == SOURCES[2]:
        if not path:
            raise TrainingDataError("Choose a dataset folder made by `hydrafm simulate`.")
        return AFMDataset(path)
    if not pairs:
        raise TrainingDataError("Choose at least one atoms (points) layer; each is paired with its stack.")
    _, info, _ = load_checkpoint(base)
    return stack_atom_samples(pairs, info.pixel_size, info.dz, info.config.n_heights, names=names)


def _finetune_job(source, path, pairs, names, base, per_structure, name, config, val_fraction, resume, stop,
                  engine="torch", random_tips=False):
    """Worker body: data, then training; yields Progress / EpochStats; returns ``(model path, stopped)``.

    ``stop`` (a threading.Event) ends the run after the current batch: the training
    generator is closed, which keeps the best epoch so far and writes its card.
    """
    from ..models.registry import user_models_dir
    from ..training.finetune import finetune

    data = yield from _build_data(source, path, pairs, names, base, per_structure, engine, random_tips)
    gen = finetune(data, name, base, config, val_fraction, resume=resume)
    try:
        for rec in gen:
            yield rec
            if stop.is_set():
                break
    finally:
        gen.close()
    return user_models_dir() / f"{name}.pt", stop.is_set()


class LossPlot:
    """A small matplotlib canvas: losses (left) and per-label F1 (right) per epoch."""

    def __init__(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4.2, 2.2), dpi=90, tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.ax_loss, self.ax_f1 = self.figure.subplots(1, 2)
        self.clear()

    def clear(self) -> None:
        self.epochs: list[int] = []
        self.train: list[float] = []
        self.val: list[float] = []
        self.f1: dict[str, list[float]] = {}
        self.draw()

    def add(self, rec: Any) -> None:
        self.epochs.append(rec.epoch)
        self.train.append(rec.train_loss)
        self.val.append(rec.val_loss)
        for g, v in (rec.scores or {}).items():
            if isinstance(v, dict):
                self.f1.setdefault(g, [float("nan")] * (len(self.epochs) - 1)).append(v["f1"])
        for vals in self.f1.values():
            vals.extend([float("nan")] * (len(self.epochs) - len(vals)))
        self.draw()

    def draw(self) -> None:
        from ..simulate.labels import LABEL_COLORS

        a, b = self.ax_loss, self.ax_f1
        a.clear()
        b.clear()
        a.plot(self.epochs, self.train, "o-", label="train", ms=3)
        a.plot(self.epochs, self.val, "s-", label="validation", ms=3)
        a.set(xlabel="epoch", ylabel="loss", title="loss")
        colors = {"O": LABEL_COLORS["O"], "Na": LABEL_COLORS["Na"], "K": LABEL_COLORS["K"], "H": LABEL_COLORS["H_up"]}
        for g, vals in self.f1.items():
            b.plot(self.epochs, vals, "o-", ms=3, label=g, color=colors.get(g))
        b.set(xlabel="epoch", ylabel="F1", title="validation F1", ylim=(0, 1.02))
        for ax in (a, b):
            if ax.lines:
                ax.legend(fontsize=7)
            ax.tick_params(labelsize=7)
        self.canvas.draw_idle()


class FinetuneWidget(Container):
    """Fine-tune a model on structures, corrected scans in the viewer, or a simulated dataset."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self._worker: Any = None
        self.source = RadioButtons(label="Data", choices=list(SOURCES), value=SOURCES[1])
        self.folder = FileEdit(mode="d", label="Folder", visible=False)
        self.per_structure = SpinBox(label="Draws / structure", value=8, min=1, max=200, visible=False,
                                     tooltip="Simulated stacks per structure (random tip, rotation, offset)")
        self.engine = ComboBox(label="Simulator", choices=["torch", "ppafm"], value="torch", visible=False,
                               tooltip="torch: HydrAFM's probe-particle engine (any torch device); ppafm: the "
                                       "OpenCL reference, run in a separate process")
        self.random_tips = CheckBox(text="Experiment-like tips", value=False, visible=False,
                                    tooltip="Draw each stack's tip like an experiment, as the shipped "
                                            "models were trained: closest probe 2.3–3.8 Å, stiffness "
                                            "0.25–0.8 N/m, charge −0.2…+0.1 e, amplitude and true height "
                                            "step varied")
        self.atoms_layers = Select(label="Atoms layers", choices=self._points_choices,
                                   tooltip="Points layers with corrected atoms; each is paired with the stack it was "
                                           "predicted from (or the Predict widget's stack)")
        self._models: dict = {}
        self.base = ComboBox(label="Base model", choices=lambda *_: list(self._models))
        self.freeze = CheckBox(text="Freeze encoder", value=False)
        self.epochs = SpinBox(label="Epochs", value=20, min=1, max=1000)
        self.lr = FloatSpinBox(label="Learning rate", value=3e-4, min=1e-6, max=1e-1, step=1e-4)
        self.batch_size = SpinBox(label="Batch size", value=8, min=1, max=256)
        self.val_fraction = FloatSpinBox(label="Validation", value=0.2, min=0.05, max=0.5, step=0.05,
                                         tooltip="Fraction of the samples held out to pick the best epoch")
        self.device = ComboBox(label="Device", choices=["auto", "cpu", "cuda", "mps"], value="auto")
        self.name = LineEdit(label="New model name", value="my-model")
        self.train_button = PushButton(text="Train")
        self.resume_button = PushButton(text="Resume", enabled=False)
        self.progress = ProgressBar(label="Progress", value=0, min=0, max=1)
        self.info = Label(value="")
        self.plot = LossPlot()
        self.extend([self.source, self.folder, self.per_structure, self.engine, self.random_tips, self.atoms_layers,
                     self.base, self.freeze, self.epochs, self.lr, self.batch_size, self.val_fraction, self.device, self.name,
                     self.train_button, self.resume_button, self.progress, self.info])
        self.plot.canvas.setMinimumHeight(200)
        self.native.layout().addWidget(self.plot.canvas)
        self.source.changed.connect(self._on_source)
        self.train_button.changed.connect(self._on_train_clicked)
        self.resume_button.changed.connect(lambda *_: self.start(resume=True))
        self.name.changed.connect(self._update_resume)
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed):
            ev.connect(lambda *_: self.atoms_layers.reset_choices())
        self.refresh_models()
        from ..models.registry import on_models_changed

        on_models_changed(self.refresh_models)
        self._update_resume()

    # ------------------------------------------------------------- choices
    def _points_choices(self, *_: Any) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in self._viewer.layers if layer._type_string == "points"]

    def refresh_models(self) -> None:
        from ..models.registry import list_models

        self._models = {m.name: m for m in list_models()}
        current = self.base.value
        self.base.reset_choices()
        if current in self._models:
            self.base.value = current

    def _on_source(self, value: str) -> None:
        self.folder.visible = value != SOURCES[1]
        self.per_structure.visible = value == SOURCES[0]
        self.engine.visible = value == SOURCES[0]
        self.random_tips.visible = value == SOURCES[0]
        self.atoms_layers.visible = value == SOURCES[1]

    def _update_resume(self, *_: Any) -> None:
        from ..models.registry import user_models_dir

        name = self.name.value.strip()
        self.resume_button.enabled = bool(name) and not self.running and \
            (user_models_dir() / f"{name}.last.pt").exists()

    # ------------------------------------------------------------- training
    @property
    def running(self) -> bool:
        return self._worker is not None

    def _on_train_clicked(self, *_: Any) -> None:
        if self.running:
            self.stop()
        else:
            self.start(resume=False)

    def _pairs(self) -> tuple[list[tuple[Any, Any]], list[str]]:
        pairs, names = [], []
        for points in self.atoms_layers.value or []:
            stack_layer = stack_layer_for(self._viewer, points)
            pairs.append((stack_of_layer(stack_layer), atoms_of_layer(points)))
            names.append(f"{points.name} on {stack_layer.name}")
        return pairs, names

    def start(self, resume: bool = False) -> None:
        """Build the data and train in a worker thread."""
        from napari.qt.threading import create_worker

        from ..training.finetune import check_model_name
        from ..training.train import TrainConfig, usable_device

        try:
            name = check_model_name(self.name.value.strip())
            entry = self._models.get(self.base.value)
            if entry is None:
                raise ValueError("Choose a base model.")
            pairs, names = self._pairs() if self.source.value == SOURCES[1] else ([], [])
            folder = str(self.folder.value or "")
            folder = "" if folder in ("", ".") else folder
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self._fail(exc)
            return
        device, notice = usable_device(self.device.value)
        if notice:
            from napari.utils.notifications import show_warning

            show_warning(notice)
        config = TrainConfig(epochs=self.epochs.value, batch_size=self.batch_size.value, lr=self.lr.value,
                             device=str(device), freeze_encoder=self.freeze.value, epoch_scores=True)
        if not resume:
            self.plot.clear()
        import threading

        self._stop = threading.Event()
        self._busy(True, "Resuming…" if resume else "Preparing the training data…")
        self._worker = create_worker(_finetune_job, self.source.value, folder, pairs, names, entry.path,
                                     self.per_structure.value, name, config, self.val_fraction.value, resume,
                                     self._stop, self.engine.value, self.random_tips.value,
                                     _ignore_errors=True)
        self._worker.yielded.connect(self._on_record)
        self._worker.returned.connect(self._on_done)
        self._worker.errored.connect(self._fail)
        self._worker.finished.connect(self._on_finished)
        self._worker.start()

    def stop(self) -> None:
        """Stop after the current batch; the best checkpoint so far is kept."""
        if self._worker is not None:
            self._stop.set()
            self.info.value = "Stopping…"

    def _on_record(self, rec: Any) -> None:
        if not show_progress(self.progress, rec):
            self.plot.add(rec)
            f1 = ", ".join(f"{g} {v['f1']:.2f}" for g, v in (rec.scores or {}).items() if isinstance(v, dict))
            self.info.value = (f"epoch {rec.epoch}/{rec.epochs}: loss {rec.train_loss:.4f}, "
                               f"validation {rec.val_loss:.4f}{' (best)' if rec.improved else ''}\nF1 {f1}")

    def _on_done(self, result: tuple[Path, bool]) -> None:
        path, stopped = result
        if stopped:
            kept = "the best epoch so far is saved" if Path(path).exists() else "no epoch had finished"
            self.info.value = f"Stopped: {kept}; Resume continues the run."
        else:
            self.info.value = f"Saved {Path(path).stem} ({path}); it is in the Predict model list."
        self._announce()

    def _announce(self) -> None:
        from ..models.registry import notify_models_changed

        notify_models_changed()

    def _on_finished(self) -> None:
        self._worker = None
        self._busy(False, None)
        self._update_resume()

    def _busy(self, busy: bool, message: str | None) -> None:
        self.train_button.text = "Stop" if busy else "Train"
        for w in (self.source, self.folder, self.atoms_layers, self.base, self.name, self.resume_button):
            w.enabled = not busy
        if message:
            self.info.value = message

    def _fail(self, exc: BaseException) -> None:
        report_error(exc, self.info)
