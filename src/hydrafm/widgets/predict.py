"""The Predict dock widget: stack → atoms as colour-coded points; edit, verify by simulation, export.

The network runs in a napari worker thread, tile by tile, so the viewer stays
responsive and Cancel takes effect between tiles. Each run adds a new Points
layer of whole molecules (features ``label``, ``confidence``, ``mol``, ``shell``); the
threshold slider re-filters the latest run's maps without running the network again,
until the atoms are edited. With *Select whole molecules* on, selecting any atom
selects its molecule (an ion with its hydration shell), so moving or deleting acts on
whole molecules.
"""

from __future__ import annotations

import gc

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    Label,
    ProgressBar,
    PushButton,
)

from .._layers import ATOMS_KEY, STACK_KEY, atoms_layer_data, label_colormap, point_sizes
from ..io.xyz import LABELS, write_xyz
from ._common import (atoms_of_layer, confirm, is_stack_layer, report_error, show_progress,
                      stack_layer_for, stack_of_layer)

if TYPE_CHECKING:
    import napari

    from ..predict.predictor import Prediction

DEVICES = ("auto", "cpu", "cuda", "mps")
WARM_UP_NAME = "hydrafm warm-up"
_WARM = False  # the points renderer has been warmed up in this process
NO_MODEL = "(no model: choose a file)"


def _predict_job(stack: Any, model: Any, device: Any, threshold: float, stack_name: str, units: tuple | None,
                 denoise: bool | None = None, depth: bool | None = None, bond_ends: bool | None = None,
                 o_check: bool | None = None):
    """Worker body: the maps tile by tile (progress, cancel), the atoms and their (hidden) Points layer.

    Everything but inserting the layer into the viewer happens here, off the main thread.
    ``denoise``: True runs the shipped denoiser first; None does what the model's card says. ``depth``:
    False leaves every O and ion at z = 0; None places the molecules at their depths as the card says.
    ``bond_ends``: True checks which end of each H-bond its level H sits on with the shipped bond-end
    classifier; ``o_check``: True checks every O peak with the shipped O check; False: no check; None (either):
    as the model's card says.
    """
    from ..predict.predictor import iter_predict_maps

    pred = yield from iter_predict_maps(stack, model, device, denoise=denoise, depth=depth)
    atoms = pred.atoms(threshold, bond_ends=bond_ends, o_check=o_check)
    return pred, atoms, _result_layer(pred, atoms, threshold, stack_name, units)


def _check_switch(ticked: bool, card_asks: bool) -> bool | None:
    """A check box's word to Predict: ticked where the card asks for the check → None (the card's own choice,
    which may name another check file); ticked → True (the shipped check); unticked → False (none)."""
    if not ticked:
        return False
    return None if card_asks else True


def _result_layer(pred: Prediction, atoms: Any, threshold: float, stack_name: str, units: tuple | None) -> Any:
    """A hidden Points layer of predicted atoms, in the stack layer's units."""
    from napari.layers import Points

    meta = {"model": pred.model, "threshold": float(threshold), "stack": stack_name,
            "closest_probe": atoms.info.get("closest_probe"), "bond_ends": atoms.info.get("bond_ends"),
            "o_check": atoms.info.get("o_check")}
    data, kwargs, _ = atoms_layer_data(atoms, f"atoms ({stack_name})", meta)
    if units is not None:
        kwargs["units"] = units[-2:]  # same lateral axes as the stack's layer
    return Points(data, **kwargs, visible=False)


def _units_of(layer: Any) -> tuple | None:
    units = getattr(layer, "units", ())
    return tuple(str(u) for u in units) if len(units) == 3 else None


def _leave_a_core_for_the_viewer() -> None:
    """Run torch on all cores but one, so the Qt main thread is never starved on a small CPU."""
    import os

    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))


def _verify_job(gen, stack_name: str, common: dict):
    """Worker body of *Verify*: the simulation, then the two image layers (built here, off the main thread)."""
    from napari.layers import Image

    v = yield from gen
    # built hidden: inserting a layer and drawing it the first time fall in separate event-loop turns
    simulated = Image(v.simulated.data, name=f"simulated ({stack_name})", colormap="gray", visible=False, **common)
    lim = float(np.percentile(np.abs(v.residual), 99.5)) or 1.0
    residual = Image(v.residual, name=f"residual ({stack_name})", colormap="PiYG", contrast_limits=(-lim, lim),
                     visible=False, **common)
    return v, simulated, residual


class PredictWidget(Container):
    """Predict atoms for the chosen stack layer, then edit, verify and export them."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self._worker: Any = None
        # id(points layer) → (maps, edited?, the checks it was predicted with: {"bond_ends", "o_check"})
        self._results: dict[int, tuple[Prediction, bool, dict]] = {}
        self._checks_of: str | None = None  # the model whose card last set the check boxes
        self._last_result: Any = None
        self._settling = False  # a result was added; its maps and summary follow in a later turn
        self._selecting = False  # growing a selection to whole molecules

        self.stack = ComboBox(label="Stack", choices=self._stack_choices, nullable=True,
                              tooltip="An image layer holding a multi-height stack")
        self._models: dict = {}
        self.model = ComboBox(label="Model", choices=lambda *_: list(self._models) or [NO_MODEL])
        self.model_file = FileEdit(mode="r", label="or model file", filter="HydrAFM model (*.pt)")
        self.device = ComboBox(label="Device", choices=list(DEVICES), value="auto")
        self.threshold = FloatSlider(label="Threshold", min=0.05, max=0.95, step=0.01, value=0.5,
                                     tooltip="Minimum confidence; re-filters the latest result without re-running")
        self.show_maps = CheckBox(text="Add label maps", value=False)
        self.denoise = CheckBox(
            text="Denoise first", value=False,
            tooltip="Take experiment-like noise (white, 1/f, planes, line jumps) off the stack with the shipped "
                    "denoiser before predicting; a stack that looks clean is left alone (docs/predict.md)")
        self.depth = CheckBox(
            text="Molecules at their depth", value=True,
            tooltip="Place each molecule as deep below the shallowest one as the depth network reads "
                    "from the stack (a bilayer's lower half below its upper half): the points' z feature "
                    "and the exported .xyz; unticked, every O and ion at z = 0")
        self.bond_ends = CheckBox(
            text="Check H-bond ends", value=False,
            tooltip="Put each level H on the donor end of its H bond as the bond-end classifier reads it "
                    "from the stack (helps on ice-like layers; docs/predict.md); ticked when a model's "
                    "card asks for it")
        self.o_check = CheckBox(
            text="Check O peaks", value=False,
            tooltip="Show every O peak to the O check, which reads the stack around it: unlikely O are "
                    "dropped, the others moved where it puts them (finds misplaced O of a bilayer's lower "
                    "half; docs/predict.md); ticked when a model's card asks for it (the shipped "
                    "'water' does)")
        self.predict_button = PushButton(text="Predict")
        self.progress = ProgressBar(label="Progress", value=0, min=0, max=1, visible=False)
        self.new_label = ComboBox(label="Atom label", choices=list(LABELS), value="O",
                                  tooltip="Label of atoms you add; 'Relabel selected' applies it to selected atoms")
        self.relabel_button = PushButton(text="Relabel selected")
        self.select_molecules = CheckBox(
            text="Select whole molecules", value=True,
            tooltip="Selecting an atom selects its molecule (an ion: with its hydration shell); "
                    "moving or deleting then acts on all of it")
        self.verify_button = PushButton(text="Verify by simulation",
                                        tooltip="Simulate the AFM stack of the atoms and compare")
        self.engine = ComboBox(label="Simulator", choices=["torch", "ppafm"], value="torch",
                               tooltip="torch: HydrAFM's probe-particle engine (held to ppafm by tests); ppafm: "
                                       "the OpenCL reference, run in a separate process")
        self.refine_button = PushButton(text="Refine", tooltip="Fit the molecules to the stack through the AFM "
                                                               "simulator (positions, H classes, tip); colours by fit")
        self.hbond_turns = CheckBox(
            text="Ice-rule turns", value=False,
            tooltip="Refine also turns waters whose H do not point along H bonds to neighbours into orientations "
                    "that do, when the scan supports it, and favours H bonds in the fit (helps on ice-like "
                    "layers; slower)")
        self.undo_refine_button = PushButton(text="Undo refine", enabled=False)
        self.export_path = FileEdit(mode="w", label="Export to", filter="Extended XYZ (*.xyz)")
        self.export_button = PushButton(text="Export .xyz")
        self.info = Label(value="")
        self.extend([self.stack, self.model, self.model_file, self.device, self.threshold, self.show_maps,
                     self.denoise, self.depth, self.o_check, self.bond_ends, self.predict_button, self.progress, self.new_label,
                     self.relabel_button, self.select_molecules,
                     self.engine, self.verify_button, self.refine_button, self.hbond_turns, self.undo_refine_button,
                     self.export_path, self.export_button, self.info])

        self.refresh_models()
        from ..models.registry import on_models_changed

        on_models_changed(self.refresh_models)
        self.predict_button.changed.connect(self._on_predict_clicked)
        self.threshold.changed.connect(self._on_threshold)
        self.new_label.changed.connect(self._on_new_label)
        self.relabel_button.changed.connect(self.relabel_selected)
        self.verify_button.changed.connect(self.verify)
        self.refine_button.changed.connect(self._on_refine_clicked)
        self.undo_refine_button.changed.connect(self.undo_refine)
        self._refine_undo: tuple | None = None  # (points layer, its data, features, sizes, colours) before refining
        self.export_button.changed.connect(self._on_export_clicked)
        self.model.changed.connect(self._update_model_tooltip)
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed):
            ev.connect(self._refresh_stacks)
        self._refresh_stacks()
        from qtpy.QtCore import QTimer

        from ._vispy_cache import install

        install()
        QTimer.singleShot(0, self._warm_up)

    def _warm_up(self) -> None:
        """Build and draw one transparent atoms layer once, so the first result appears without a hitch."""
        from qtpy.QtCore import QTimer

        from ..io.xyz import points_to_atoms

        global _WARM
        if _WARM:
            return
        _WARM = True
        try:
            data, kwargs, _ = atoms_layer_data(points_to_atoms(np.zeros((1, 3)), {"label": ["O"]}), WARM_UP_NAME)
            stacks = [lay for lay in self._viewer.layers if len(getattr(lay, "units", ())) == 3]
            if stacks:
                kwargs["units"] = tuple(str(u) for u in stacks[0].units)[-2:]
            layer = self._viewer.add_points(data, **kwargs, opacity=0.0)
        except Exception:  # noqa: BLE001 - a warm-up never gets in the way
            return

        def remove() -> None:
            if layer in self._viewer.layers:
                self._viewer.layers.remove(layer)
            # napari and Qt make millions of long-lived objects at start-up; a full garbage collection
            # walks them all (100-200 ms on the main thread, whenever it happens to trigger). Freezing
            # them (once, after collecting what is garbage now) moves them out of the collector's way;
            # objects made later are collected as usual.
            gc.collect()
            gc.freeze()

        QTimer.singleShot(50, remove)

    # ------------------------------------------------------------- choices
    def _stack_choices(self, *_: Any) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in self._viewer.layers if is_stack_layer(layer)]

    def _refresh_stacks(self, *_: Any) -> None:
        current = self.stack.value
        self.stack.reset_choices()
        if self.stack.value is None and self.stack.choices:
            self.stack.value = self.stack.choices[-1]
        elif current in self.stack.choices:
            self.stack.value = current

    def refresh_models(self) -> None:
        """Re-read the shipped and user models (after a fine-tune, say)."""
        from ..models.registry import list_models

        self._models = {m.name: m for m in list_models()}
        current = self.model.value
        self.model.reset_choices()
        if current in self._models:
            self.model.value = current
        self._update_model_tooltip()

    def _update_model_tooltip(self, *_: Any) -> None:
        entry = self._models.get(self.model.value)
        self.model.tooltip = entry.summary if entry else "No shipped or saved model; choose a model file"
        if entry is not None and self._last_result is None:
            self.threshold.value = entry.threshold  # the model's recommended threshold, until a result exists
        if entry is not None and entry.name != self._checks_of:  # a newly picked model:
            self._checks_of = entry.name  # its card's checks, which the user may then change
            self.o_check.value, self.bond_ends.value = entry.o_check, entry.bond_ends

    def _model_file(self) -> Path | None:
        """The model file the user chose, if any (it overrides the picked model)."""
        f = str(self.model_file.value or "")
        return Path(f) if f not in ("", ".") else None

    def chosen_model(self) -> Path:
        """The checkpoint to use: the model file when one is chosen, else the picked model."""
        chosen = self._model_file()
        if chosen is not None:
            return chosen
        entry = self._models.get(self.model.value)
        if entry is None:
            raise ValueError("No model: choose a model file (.pt) or fine-tune one first.")
        return entry.path

    # ------------------------------------------------------------- predict
    @property
    def running(self) -> bool:
        """True while a prediction runs or its result is still being shown."""
        return self._worker is not None or self._settling

    def _on_predict_clicked(self, *_: Any) -> None:
        if self.running:
            self.cancel()
        else:
            self.predict()

    def predict(self) -> None:
        """Start predicting the chosen stack in a worker thread."""
        from napari.qt.threading import create_worker

        layer = self.stack.value
        try:
            if layer is None:
                raise ValueError("Choose a stack layer first (load a scan or the sample).")
            stack = stack_of_layer(layer)
            model = self.chosen_model()
        except Exception as exc:  # noqa: BLE001 - shown to the user, the widget stays usable
            self._fail(exc)
            return
        device = self._usable_device()
        self._busy(True, "Predicting…", "Cancel")
        picked = None if self._model_file() is not None else self._models.get(self.model.value)  # its card
        checks = {key: _check_switch(box.value, bool(picked and getattr(picked, key)))
                  for key, box in (("bond_ends", self.bond_ends), ("o_check", self.o_check))}
        self._worker = create_worker(_predict_job, stack, model, device, self.threshold.value, layer.name,
                                     _units_of(layer), True if self.denoise.value else None,
                                     None if self.depth.value else False, **checks, _ignore_errors=True)
        self._worker.yielded.connect(self._on_progress)
        self._worker.returned.connect(lambda res, layer=layer: self._on_prediction(*res, layer, checks))
        self._worker.errored.connect(self._fail)
        self._worker.aborted.connect(lambda: self._set_info("Prediction cancelled."))
        self._worker.finished.connect(self._on_finished)
        self._worker.start()

    def cancel(self) -> None:
        """Ask the running job to stop at its next tile."""
        if self._worker is not None:
            self._worker.quit()
            self._set_info("Cancelling…")

    def _on_progress(self, rec: Any) -> None:
        show_progress(self.progress, rec)

    def _on_prediction(self, pred: Prediction, atoms: Any, layer: Any, stack_layer: Any,
                       checks: dict | None = None) -> None:
        from qtpy.QtCore import QTimer

        checks = checks or {}
        if layer is None or atoms is None or atoms.info.get("threshold") != self.threshold.value:
            atoms = pred.atoms(self.threshold.value, **checks)  # (the slider moved while predicting)
            layer = _result_layer(pred, atoms, self.threshold.value, stack_layer.name, _units_of(stack_layer))
        # The worker built the layer; napari inserts it (~50 ms) and draws it in separate event-loop turns,
        # and the widget's own updates come after, so that no main-thread stall adds them up.
        self._viewer.add_layer(layer)
        QTimer.singleShot(30, lambda layer=layer: setattr(layer, "visible", True))
        self._results[id(layer)] = (pred, False, checks)
        self._last_result = layer
        layer.events.data.connect(lambda *_, layer=layer: self._on_edited(layer))
        layer.selected_data.events.items_changed.connect(
            lambda added, removed, layer=layer: self._on_selection(layer, added, removed))
        self._settling = True
        QTimer.singleShot(60, lambda: self._after_prediction(pred, layer, stack_layer.name))

    def _after_prediction(self, pred: Prediction, layer: Any, stack_name: str) -> None:
        self._settling = False
        try:
            if self.show_maps.value:
                self._add_maps(pred, stack_name)
            self._on_new_label(self.new_label.value)
            meta = layer.metadata.get(ATOMS_KEY, {})
            said = "".join(f"; {name}: {meta[key]}" for key, name in (("o_check", "O check"),
                                                                     ("bond_ends", "H-bond ends")) if meta.get(key))
            self._set_info(self._summary(layer) + f"\nmodel {Path(pred.model).stem}" + said)
        except RuntimeError:  # the widget was closed in the meantime
            pass

    def _add_maps(self, pred: Prediction, name: str) -> None:
        cmap = label_colormap()
        for k, lab in enumerate(pred.info.labels):
            from napari.utils.colormaps import Colormap

            colors = [(0, 0, 0, 0), cmap.get(lab, (1, 1, 1, 1))]
            self._viewer.add_image(pred.maps[k], name=f"{lab} map ({name})", scale=pred.pixel_size,
                                   units=("angstrom", "angstrom"),
                                   translate=pred.origin, colormap=Colormap(colors, name=f"hydrafm-{lab}"),
                                   blending="additive", contrast_limits=(0, 1), opacity=0.7,
                                   metadata={"hydrafm_derived": "label map"})

    def _on_finished(self) -> None:
        self._worker = None
        self._busy(False, None, "Predict")

    def _on_edited(self, layer: Any) -> None:
        if id(layer) in self._results:
            pred, _, checks = self._results[id(layer)]
            self._results[id(layer)] = (pred, True, checks)

    def _on_threshold(self, value: float) -> None:
        layer = self._last_result
        if layer is None or layer not in self._viewer.layers or id(layer) not in self._results:
            return
        pred, edited, checks = self._results[id(layer)]
        if edited:
            self._set_info("The atoms were edited, so the threshold is not re-applied; predict again to use it.")
            return
        atoms = pred.atoms(value, **checks)
        data, kwargs, _ = atoms_layer_data(atoms)
        with layer.events.data.blocker():
            layer.data = data
            layer.features = kwargs["features"]
            layer.size = kwargs["size"]
            layer.refresh_colors()
        layer.metadata[ATOMS_KEY]["threshold"] = float(value)
        layer.metadata[ATOMS_KEY]["closest_probe"] = atoms.info.get("closest_probe")
        for key in ("bond_ends", "o_check"):
            layer.metadata[ATOMS_KEY][key] = atoms.info.get(key)
        self._set_info(self._summary(layer))

    # ------------------------------------------------------------- editing
    def result_layer(self) -> Any:
        """The atoms to verify or export: the selected atoms layer, else the latest result."""
        active = self._viewer.layers.selection.active
        if active is not None and active._type_string == "points":
            return active
        if self._last_result is not None and self._last_result in self._viewer.layers:
            return self._last_result
        raise ValueError("No atoms yet: predict first, or select a points layer.")

    def _on_new_label(self, label: str) -> None:
        layer = self._last_result
        if layer is not None and layer in self._viewer.layers:
            layer.feature_defaults["label"] = label
            layer.feature_defaults["confidence"] = 1.0
            layer.current_size = float(point_sizes([label])[0])

    def _on_selection(self, layer: Any, added: tuple, removed: tuple) -> None:
        """Grow a selection to whole molecules: atoms picked bring their molecule, atoms dropped take it along."""
        if (not self.select_molecules.value or self._selecting or "mol" not in layer.features
                or not len(layer.selected_data)):
            return
        from ..predict.molecules import molecule_members

        mol = layer.features["mol"].to_numpy()
        added, removed = [i for i in added if i < len(mol)], [i for i in removed if i < len(mol)]
        shell = layer.features["shell"].to_numpy() if "shell" in layer.features else None
        dropped = molecule_members(mol, shell, removed).tolist() if removed else []
        picked = molecule_members(mol, shell, added).tolist() if added else []
        want = (set(layer.selected_data) - set(dropped)) | set(picked)
        if want != set(layer.selected_data):
            self._selecting = True
            try:
                layer.selected_data = want
            finally:
                self._selecting = False

    def relabel_selected(self, *_: Any) -> None:
        """Give the selected atoms the chosen label (and its size and colour)."""
        try:
            layer = self.result_layer()
        except ValueError as exc:
            self._fail(exc)
            return
        sel = sorted(layer.selected_data)
        if not sel:
            self._set_info("Select atoms first (points layer, select mode).")
            return
        label = self.new_label.value
        labels = layer.features["label"].astype(str).to_numpy()
        labels[sel] = label
        feats = layer.features.copy()
        feats["label"] = labels
        feats.loc[sel, "confidence"] = 1.0
        layer.features = feats
        layer.size = point_sizes(labels)
        layer.refresh_colors()
        self._on_edited(layer)
        self._set_info(f"{len(sel)} atom(s) relabelled {label}.\n" + self._summary(layer))

    # ------------------------------------------------------------- verify
    def verify(self, *_: Any) -> None:
        """Simulate the atoms' AFM stack at the scan's heights in a worker; show it and the residual."""
        from napari.qt.threading import create_worker

        from ..simulate.verify import iter_verify_atoms

        if self.running:
            return
        try:
            points, stack_layer, stack, atoms = self._atoms_and_stack()
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
            return
        self._busy(True, "Simulating the atoms' AFM stack…", "Cancel")
        common = {"scale": tuple(stack_layer.scale), "translate": tuple(stack_layer.translate),
                  "units": tuple(str(u) for u in stack_layer.units), "metadata": {"hydrafm_derived": "verification"}}
        self._worker = create_worker(_verify_job, iter_verify_atoms(stack, atoms, engine=self.engine.value),
                                     stack_layer.name, common, _ignore_errors=True)
        self._worker.yielded.connect(self._on_progress)
        self._worker.returned.connect(self._on_verified)
        self._worker.errored.connect(self._fail)
        self._worker.finished.connect(self._on_finished)
        self._worker.start()

    def _usable_device(self) -> Any:
        """The chosen device, or the CPU with a notice when it fails; on the CPU one core is left to the viewer."""
        from ..training.train import usable_device

        device, notice = usable_device(self.device.value)
        if notice:
            self._notify(notice, warning=True)
        if device.type == "cpu":
            _leave_a_core_for_the_viewer()
        return device

    def _atoms_and_stack(self) -> tuple[Any, Any, Any, Any]:
        """The atoms layer to verify or refine, its stack layer, the stack and the atoms."""
        points = self.result_layer()
        stack_layer = stack_layer_for(self._viewer, points, self.stack.value)
        return points, stack_layer, stack_of_layer(stack_layer), atoms_of_layer(points)

    def _on_verified(self, result: tuple) -> None:
        """Insert the layers the worker built, each over several event-loop turns (see ``_staging``)."""
        from ._staging import add_layer_in_turns

        v, simulated, residual = result
        self._settling = True

        def failed(exc: BaseException) -> None:
            self._settling = False
            try:
                self._fail(exc)
            except RuntimeError:  # the widget was closed in the meantime
                pass

        def second() -> None:
            add_layer_in_turns(self._viewer, residual, done=finish, failed=failed)

        def finish() -> None:
            self._settling = False
            try:
                note = f"\n{v.dropped} overlapping atom(s) left out of the simulation" if v.dropped else ""
                self._set_info(f"Similarity {v.similarity:.3f} (mean correlation over heights; 1 = identical)\n"
                               f"best closest distance {v.distance:.1f} Å above the top atom{note}")
                self._notify(f"Verification: similarity {v.similarity:.3f}")
            except RuntimeError:  # the widget was closed in the meantime
                pass

        # the residual is selected last, as when both were added in one go: no need to select the first
        add_layer_in_turns(self._viewer, simulated, select=False, done=second, failed=failed)

    # ------------------------------------------------------------- refine
    def _on_refine_clicked(self, *_: Any) -> None:
        if self.running:
            self.cancel()
        else:
            self.refine()

    def refine_settings(self) -> Any:
        """The :class:`~hydrafm.refine.RefineSettings` the Refine button uses (defaults + the widget's options)."""
        from ..refine import RefineSettings

        return RefineSettings(hbond_turns=bool(self.hbond_turns.value))

    def refine(self, settings: Any = None) -> None:
        """Fit the atoms to their stack in a worker: the residual shrinks as it goes, the points update at the end."""
        from napari.qt.threading import create_worker

        from ..refine import iter_refine_atoms

        if settings is None:
            settings = self.refine_settings()

        try:
            points, stack_layer, stack, atoms = self._atoms_and_stack()
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
            return
        device = self._usable_device()
        name = f"refine residual ({stack_layer.name})"
        residual = next((lay for lay in self._viewer.layers if lay.name == name), None)
        if residual is None:
            residual = self._viewer.add_image(
                np.zeros(stack.data.shape, np.float32), name=name, colormap="PiYG", contrast_limits=(-3, 3),
                scale=tuple(stack_layer.scale), translate=tuple(stack_layer.translate),
                units=tuple(str(u) for u in stack_layer.units), metadata={"hydrafm_derived": "refine residual"})
        self._busy(True, "Refining: fitting the molecules to the stack…", "Cancel")
        self.refine_button.text = "Cancel refine"
        self._worker = create_worker(iter_refine_atoms, stack, atoms, settings, device, _ignore_errors=True)
        self._worker.yielded.connect(lambda rec, layer=residual: self._on_refine_record(rec, layer))
        self._worker.returned.connect(lambda res, layer=points: self._on_refined(res, layer))
        self._worker.errored.connect(self._fail)
        self._worker.aborted.connect(lambda: self._set_info("Refine cancelled; the atoms are unchanged."))
        self._worker.finished.connect(self._on_refine_finished)
        self._worker.start()

    def _on_refine_record(self, rec: Any, residual: Any) -> None:
        from ..refine import RefineSnapshot

        if isinstance(rec, RefineSnapshot):
            if residual in self._viewer.layers:
                residual.data = rec.residual
            self._set_info(f"Refining: step {rec.step} of {rec.total}, image mismatch {rec.loss:.4f}")
        else:
            show_progress(self.progress, rec)

    def _on_refined(self, res: Any, layer: Any) -> None:
        """Replace the points in place (kept for *Undo refine*), coloured by each molecule's fit score."""
        if layer not in self._viewer.layers:
            return
        self._refine_undo = (layer, layer.data.copy(), layer.features.copy(), layer.size.copy(),
                             layer.face_color.copy())
        data, kwargs, _ = atoms_layer_data(res.atoms)
        feats = kwargs["features"]
        order = np.argsort([str(v).startswith("H") for v in res.atoms.arrays["label"]], kind="stable")
        feats["fit"] = np.nan_to_num(res.atoms.arrays["fit"][order], nan=0.0)
        scale, translate = np.asarray(layer.scale), np.asarray(layer.translate)
        layer.data = (data - translate) / scale
        layer.features = feats
        layer.size = kwargs["size"]
        layer.face_colormap = "RdYlGn"
        layer.face_contrast_limits = (0.0, 1.0)
        layer.face_color = "fit"
        self.undo_refine_button.enabled = True
        lo, hi = res.image_loss
        self._set_info(f"Refined: image mismatch {lo:.4f} → {hi:.4f}; similarity {res.similarity_before.mean():.3f}"
                       f" → {res.similarity.mean():.3f}\nmoves: {res.moves['flips']} water(s) turned, "
                       f"{res.moves['added']} added, {res.moves['removed']} removed; colour = fit score "
                       f"(red 0 … green 1)")
        self._notify(f"Refine: similarity {res.similarity.mean():.3f}")

    def _on_refine_finished(self) -> None:
        self.refine_button.text = "Refine"
        self._on_finished()

    def undo_refine(self, *_: Any) -> None:
        """Put back the atoms as they were before the last refine."""
        if self._refine_undo is None:
            return
        layer, data, feats, size, colors = self._refine_undo
        self._refine_undo = None
        self.undo_refine_button.enabled = False
        if layer not in self._viewer.layers:
            return
        layer.data = data
        layer.features = feats
        layer.size = size
        layer.face_color = colors
        self._set_info("Refine undone. " + self._summary(layer))

    # ------------------------------------------------------------- export
    def _on_export_clicked(self, *_: Any) -> None:
        self.export()

    def export(self, path: str | Path | None = None) -> Path | None:
        """Write the atoms as extended XYZ; an existing file is replaced only after confirmation."""
        target = Path(path) if path is not None else Path(str(self.export_path.value or ""))
        try:
            if str(target) in ("", "."):
                raise ValueError("Choose a file to export to.")
            if target.suffix.lower() != ".xyz":
                target = target.with_suffix(".xyz")
            atoms = atoms_of_layer(self.result_layer())
            if target.exists() and not self._confirm(f"{target} exists. Replace it?"):
                self._set_info(f"Not exported: {target} exists.")
                return None
            out = write_xyz(atoms, target, overwrite=True)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
            return None
        self._set_info(f"Exported {len(atoms)} atoms to {out}")
        return out

    def _confirm(self, question: str) -> bool:
        return confirm(self.native, question)

    # ------------------------------------------------------------- helpers
    @staticmethod
    def _summary(layer: Any) -> str:
        labels = layer.features["label"].astype(str).to_numpy() if len(layer.data) else np.array([])
        counts = ", ".join(f"{lab} {int((labels == lab).sum())}" for lab in LABELS if (labels == lab).any())
        mol = layer.features["mol"].to_numpy() if len(labels) and "mol" in layer.features else np.array([-1])
        n_mol = len(np.unique(mol[mol >= 0]))
        return f"{len(labels)} atoms: {counts or 'none'}" + (f"; {n_mol} molecules" if n_mol else "")

    def _busy(self, busy: bool, message: str | None, button: str) -> None:
        self.predict_button.text = button
        self.progress.visible = busy
        self.progress.value = 0
        for w in (self.verify_button, self.export_button, self.stack, self.model, self.device):
            w.enabled = not busy
        if message:
            self._set_info(message)

    def _set_info(self, text: str) -> None:
        self.info.value = text

    def _notify(self, text: str, warning: bool = False) -> None:
        from napari.utils.notifications import show_info, show_warning

        (show_warning if warning else show_info)(text)

    def _fail(self, exc: BaseException) -> None:
        report_error(exc, self.info)


__all__ = ["PredictWidget", "STACK_KEY"]
