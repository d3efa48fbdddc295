"""The *Hydration density* dock widget: a CaCO3 slab in, the predicted water-O density out.

Pick a built-in surface (with vacancy pairs), a slab file, or an atoms layer from an
earlier run (delete or move atoms there to make your own defects), predict in a
background thread, and see:

- a 3D view looking down at the surface at an angle: the slab atoms as shaded spheres
  (Ca green, C grey, O red) and isosurfaces (marching cubes) at two or three isovalues,
  coloured by height above the top Ca plane;
- the density as a 3D Image layer (iso rendering, the isovalue slider sets its threshold;
  hidden at first, the coloured isosurfaces show the same thing),
- ρ(z), the density averaged over x and y, plotted in the widget; the *Height* slider moves
  a marker over the plot and an xy slice of the density through the 3D view (clicking the
  plot moves the slider), and xy slices at the ρ(z) peaks on demand,
- the attention gates' maps when the model has them.

*Export .cube* writes the density (Å⁻³) as a Gaussian cube in the slab's coordinates.
Layers are (z, y, x) in Å, z = 0 at the top Ca plane, like the AFM stacks.
"""

from __future__ import annotations

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
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)

from ..hydration.surfaces import SURFACES
from ..progress import Progress
from ._common import confirm, report_error, show_progress

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["HydrationWidget", "SLAB_KEY", "DensityPlot"]

SLAB_KEY = "hydrafm_slab"  # points-layer metadata: the slab's cell and provenance
FROM_FILE, FROM_LAYER = "structure file…", "atoms layer…"
ELEMENT_COLORS = {"C": "#909090", "O": "#ff2010", "Ca": "#3dff00", "H": "#ffffff"}
ATOM_SIZES = {"Ca": 1.9, "O": 1.4, "C": 1.0}  # Å, sphere diameters (about half the ionic/covalent sizes: see the water)
BULK = 0.0334  # Å⁻³, water O at 300 K
HEIGHT_COLORMAP, HEIGHT_RANGE = "turbo", (1.0, 6.0)  # isosurfaces coloured by height above the top Ca plane (Å)
VIEW_DIRECTION, VIEW_UP = (-1.0, -1.0, 0.3), (1.0, 0.0, 0.0)  # (z, y, x): down at the surface, tilted; z up


def _hydrate_job(spec: Any, options: dict, model: str, attention: bool):
    """Worker body: build or load the slab, predict; returns ``(slab, density)``."""
    from ..hydration.density import iter_predict_density
    from ..hydration.workflow import slab_from_spec

    yield Progress("building the slab", 0, 3)
    slab = spec if not isinstance(spec, (str, Path)) else slab_from_spec(spec, **options)
    dens = yield from iter_predict_density(slab, model, attention=attention)
    return slab, dens


class DensityPlot:
    """ρ(z) averaged over x and y, with the bulk density, the peaks and a height marker."""

    def __init__(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4.2, 2.0), dpi=90, tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.ax = self.figure.subplots()
        self.marker: Any = None

    def show(self, z: np.ndarray, rho: np.ndarray, peaks: list[float]) -> None:
        ax = self.ax
        ax.clear()
        ax.plot(z, rho / BULK, color="#1f77b4")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        for p in peaks:
            ax.axvline(p, color="#d62728", lw=0.8)
            ax.annotate(f"{p:.2f} Å", (p, ax.get_ylim()[1] * 0.9), fontsize=7, color="#d62728")
        self.marker = ax.axvline(float(z[0]), color="#2ca02c", lw=1.5, alpha=0.8, visible=False)
        ax.set(xlabel="height above the top Ca plane (Å)", ylabel="ρ / ρ_bulk")
        ax.tick_params(labelsize=7)
        self.canvas.draw_idle()

    def mark(self, z: float) -> None:
        """Move the height marker (a vertical line) to ``z`` Å."""
        if self.marker is not None:
            self.marker.set_xdata([z, z])
            self.marker.set_visible(True)
            self.canvas.draw_idle()

    def on_click(self, callback: Any) -> None:
        """Call ``callback(z)`` with the height clicked on the plot."""
        self.canvas.mpl_connect("button_press_event",
                                lambda ev: callback(float(ev.xdata)) if ev.inaxes is self.ax else None)


class HydrationWidget(Container):
    """Predict and show the water density above a CaCO3 surface."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self._worker: Any = None
        self._last: tuple[Any, Any, str] | None = None  # (slab, density, name)

        self.surface = ComboBox(label="Surface", choices=[*SURFACES, FROM_FILE, FROM_LAYER], value=SURFACES[0])
        self.file = FileEdit(mode="r", label="Slab file", visible=False,
                             tooltip="Any structure file ase reads: orthogonal cell, Ca/C/O, vacuum above")
        self.layer = ComboBox(label="Atoms layer", choices=self._slab_layers, nullable=True, visible=False,
                              tooltip="Slab atoms from an earlier run; delete or move atoms to make defects")
        self.vacancies = SpinBox(label="Vacancy pairs", min=0, max=50, value=0,
                                 tooltip="Ca2+/CO3 2- pairs removed from the top layer")
        self.seed = SpinBox(label="Vacancy seed", min=0, max=10_000, value=0)
        self.size = SpinBox(label="Size (Å)", min=10, max=200, value=25, tooltip="at least this wide in x and y")
        self.layers_n = SpinBox(label="Layers", min=1, max=8, value=3)
        self.model = ComboBox(label="Model", choices=self._model_choices)
        self.model_file = FileEdit(mode="r", label="or model file", filter="HydrAFM model (*.pt)")
        self.attention = CheckBox(text="Show attention maps (attention models)", value=False)
        self.predict_button = PushButton(text="Predict density")
        self.progress = ProgressBar(label="Progress", visible=False)
        self.isovalue = FloatSlider(label="Isovalue (ρ/ρ_bulk)", min=0.2, max=6.0, step=0.1, value=2.0)
        self.isovalues = LineEdit(label="Surfaces at", value="2, 4",
                                  tooltip="ρ/ρ_bulk values for the isosurface meshes (coloured by height), "
                                          "comma-separated; added with every prediction")
        self.slice_height = FloatSlider(label="Height z (Å)", min=-3.0, max=16.0, step=0.1, value=2.0,
                                  tooltip="xy slice of the density at this height above the top Ca plane, "
                                          "marked on the ρ(z) plot (or click the plot)")
        self.surfaces_button = PushButton(text="Add isosurfaces")
        self.slices_button = PushButton(text="Add xy slices at the ρ(z) peaks")
        self.export_file = FileEdit(mode="w", label="Export to", filter="Gaussian cube (*.cube)")
        self.export_button = PushButton(text="Export .cube")
        self.info = Label(value="Choose a surface and click Predict density.")
        self.plot = DensityPlot()
        self.extend([self.surface, self.file, self.layer, self.vacancies, self.seed, self.size, self.layers_n,
                     self.model, self.model_file, self.attention, self.predict_button, self.progress,
                     self.isovalue, self.isovalues, self.surfaces_button, self.slice_height, self.slices_button,
                     self.export_file,
                     self.export_button, self.info])
        self.native.layout().addWidget(self.plot.canvas)
        self.plot.canvas.setMinimumHeight(190)
        self.native.setMaximumWidth(480)

        self.surface.changed.connect(self._on_surface)
        self.predict_button.changed.connect(self._on_predict_clicked)
        self.isovalue.changed.connect(self._on_isovalue)
        self.slice_height.changed.connect(self._on_height)
        self.plot.on_click(self._on_plot_click)
        self.surfaces_button.changed.connect(self.add_isosurfaces)
        self.slices_button.changed.connect(self.add_peak_slices)
        self.export_button.changed.connect(self._on_export_clicked)
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed):
            ev.connect(lambda *_: self.layer.reset_choices())

    # ------------------------------------------------------------- choices
    def _slab_layers(self, *_: Any) -> list[tuple[str, Any]]:
        return [(lay.name, lay) for lay in self._viewer.layers if SLAB_KEY in lay.metadata]

    @staticmethod
    def _model_choices(*_: Any) -> list[str]:
        from ..hydration.density import SHIPPED_DENSITY_MODELS, WEIGHTS

        return [m for m in SHIPPED_DENSITY_MODELS if (WEIGHTS / f"{m}.pt").is_file()] or ["(none shipped)"]

    def _on_surface(self, value: str) -> None:
        builtin = value in SURFACES
        self.file.visible = value == FROM_FILE
        self.layer.visible = value == FROM_LAYER
        for w in (self.size, self.layers_n):
            w.visible = builtin
        for w in (self.vacancies, self.seed):
            w.visible = value != FROM_LAYER

    def chosen_model(self) -> str:
        f = self.model_file.value
        if f is not None and str(f) not in ("", ".") and Path(f).is_file():
            return str(f)
        return str(self.model.value)

    def _spec(self) -> tuple[Any, dict, str]:
        value = self.surface.value
        options = {"vacancies": self.vacancies.value, "seed": self.seed.value}
        if value in SURFACES:
            options |= {"size": (float(self.size.value),) * 2, "layers": self.layers_n.value}
            name = value + (f" v{self.vacancies.value} s{self.seed.value}" if self.vacancies.value else "")
            return value, options, name
        if value == FROM_FILE:
            path = self.file.value
            if path is None or not Path(path).is_file():
                raise ValueError("Choose a slab file first.")
            return str(path), options, Path(path).stem
        layer = self.layer.value
        if layer is None:
            raise ValueError("Choose an atoms layer from an earlier run (or another surface source).")
        return self._slab_of_layer(layer), {}, layer.name

    @staticmethod
    def _slab_of_layer(layer: Any):
        from ase import Atoms

        meta = layer.metadata[SLAB_KEY]
        zyx = np.asarray(layer.data, float) * np.asarray(layer.scale) + np.asarray(layer.translate)
        slab = Atoms(list(layer.features["element"].astype(str)), positions=zyx[:, ::-1],
                     cell=np.asarray(meta["cell"]), pbc=(True, True, False))
        slab.info["z_shift"] = float(meta.get("z_shift", 0.0))
        return slab

    # ------------------------------------------------------------- predict
    @property
    def running(self) -> bool:
        return self._worker is not None

    def _on_predict_clicked(self, *_: Any) -> None:
        if not self.running:
            self.predict()

    def predict(self) -> None:
        """Start the prediction in a worker thread."""
        from napari.qt.threading import create_worker

        try:
            spec, options, name = self._spec()
            model = self.chosen_model()
        except Exception as exc:  # noqa: BLE001 - shown, the widget stays usable
            self._fail(exc)
            return
        self._busy(True, f"Predicting the density of {name}…")
        self._worker = create_worker(_hydrate_job, spec, options, model, self.attention.value,
                                     _ignore_errors=True)
        self._worker.yielded.connect(self._on_progress)
        self._worker.returned.connect(lambda res, name=name: self._show(*res, name))
        self._worker.errored.connect(self._fail)
        self._worker.finished.connect(self._on_finished)
        self._worker.start()

    def _on_progress(self, rec: Any) -> None:
        show_progress(self.progress, rec)

    def _on_finished(self) -> None:
        self._worker = None
        self._busy(False, None)

    # ------------------------------------------------------------- results
    def _show(self, slab: Any, dens: Any, name: str) -> None:
        from ..hydration.workflow import density_profile_peaks

        self._last = (slab, dens, name)
        scale, translate = self._zyx(dens)
        vol = np.transpose(dens.density, (2, 1, 0))
        self._viewer.add_image(
            vol, name=f"water density ({name})", scale=scale, translate=translate, units=("angstrom",) * 3,
            colormap="cyan", rendering="iso", iso_threshold=self.isovalue.value * BULK,
            contrast_limits=(0, 6 * BULK), blending="additive", visible=False,
            metadata={"hydrafm_derived": "water density", "unit": "1/Å³"})
        self._add_slab_points(slab, name)
        for k, a in enumerate(getattr(dens, "attention", []) or []):
            self._viewer.add_image(np.transpose(a, (2, 1, 0)), name=f"attention {k + 1} ({name})", scale=scale,
                                   translate=translate, units=("angstrom",) * 3, colormap="magma",
                                   blending="additive", opacity=0.6, visible=False,
                                   metadata={"hydrafm_derived": "attention"})
        z, rho = dens.profile()
        peaks = density_profile_peaks(dens)
        self.plot.show(z, rho, peaks)
        try:
            self._isosurfaces(self._levels(), strict=False)
        except ValueError as exc:  # a malformed isovalue list: say so, show the rest
            self._fail(exc)
        self._viewer.add_image(
            vol, name=f"xy slice ({name})", scale=scale, translate=translate, units=("angstrom",) * 3,
            colormap="viridis", contrast_limits=(0, 4 * BULK), depiction="plane", opacity=0.7,
            plane={"normal": (1, 0, 0), "position": (0, vol.shape[1] / 2, vol.shape[2] / 2), "thickness": 1},
            metadata={"hydrafm_derived": "density slice plane", "unit": "1/Å³"})
        self.slice_height.min, self.slice_height.max = float(z[0]), float(z[-1])
        start = peaks[0] if peaks else 2.0
        if abs(self.slice_height.value - start) < 1e-6:
            self._on_height(start)
        self.slice_height.value = start
        self.view_from_above()
        far = rho[(z > 8) & (z < 14)]
        self._set_info(f"{name}: ρ(z) peaks at {', '.join(f'{p:.2f}' for p in peaks) or '—'} Å above the top "
                       f"Ca plane; far from the surface {far.mean() / BULK:.2f} × bulk")

    def view_from_above(self) -> None:
        """3D, the whole slab in view, looking down at the surface at an angle."""
        viewer = self._viewer
        if viewer.dims.ndisplay != 3:
            viewer.dims.ndisplay = 3
        viewer.reset_view()
        viewer.camera.set_view_direction(VIEW_DIRECTION, VIEW_UP)
        viewer.camera.perspective = 30.0
        viewer.camera.zoom *= 0.85

    def _on_height(self, z: float) -> None:
        """Move the xy slice through the 3D view and the marker on the ρ(z) plot to height ``z``."""
        self.plot.mark(z)
        if self._last is None:
            return
        _, dens, name = self._last
        k = (z - dens.origin[2]) / dens.spacing[2]
        for lay in self._viewer.layers:
            if lay.metadata.get("hydrafm_derived") == "density slice plane" and lay.name == f"xy slice ({name})":
                lay.plane.position = (float(k), *lay.plane.position[1:])

    def _on_plot_click(self, z: float) -> None:
        self.slice_height.value = float(np.clip(z, self.slice_height.min, self.slice_height.max))

    @staticmethod
    def _zyx(dens: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return tuple(dens.spacing[::-1]), tuple(dens.origin[::-1])

    def _add_slab_points(self, slab: Any, name: str) -> None:
        symbols = np.array(slab.get_chemical_symbols())
        zyx = slab.positions[:, ::-1]
        colors = [ELEMENT_COLORS.get(s, "#ffffff") for s in symbols]
        sizes = np.array([ATOM_SIZES.get(s, 1.0) for s in symbols])
        meta = {SLAB_KEY: {"cell": slab.cell.array.tolist(), "z_shift": float(slab.info.get("z_shift", 0.0)),
                           "source": name}, "hydrafm_derived": "slab"}
        self._viewer.add_points(zyx, name=f"slab ({name})", features={"element": symbols}, size=sizes,
                                face_color=colors, border_width=0, units=("angstrom",) * 3, metadata=meta,
                                projection_mode="all", shading="spherical")

    def result(self) -> tuple[Any, Any, str]:
        if self._last is None:
            raise ValueError("Predict a density first.")
        return self._last

    def _on_isovalue(self, value: float) -> None:
        for lay in self._viewer.layers:
            if lay.metadata.get("hydrafm_derived") == "water density":
                lay.iso_threshold = value * BULK

    def _levels(self) -> list[float]:
        return [float(v) for v in str(self.isovalues.value).replace(";", ",").split(",") if v.strip()]

    def add_isosurfaces(self, *_: Any) -> list[Any]:
        """Marching-cubes Surface layers at the listed ρ/ρ_bulk values, coloured by height."""
        try:
            levels = self._levels()
            if not levels:
                raise ValueError("List one or more isovalues (ρ/ρ_bulk), e.g. 2, 4")
            added = self._isosurfaces(levels, strict=True)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
            return []
        self._set_info(f"Added {len(added)} isosurface(s) at {', '.join(f'{v:g}' for v in levels)} × bulk")
        return added

    def _isosurfaces(self, levels: list[float], strict: bool) -> list[Any]:
        """One Surface per isovalue, vertices coloured by height above the top Ca plane.

        Higher isovalues (the dense adsorption sites, nested inside the lower ones) are more
        opaque. With ``strict`` an isovalue outside the density's range is an error,
        otherwise it is skipped.
        """
        from skimage.measure import marching_cubes

        _, dens, name = self.result()
        vol = np.transpose(dens.density, (2, 1, 0))
        scale, translate = self._zyx(dens)
        added = []
        for k, level in enumerate(sorted(levels)):
            if not vol.min() < level * BULK < vol.max():
                if strict:
                    raise ValueError(f"isovalue {level:g} × bulk is outside the density's range "
                                     f"({vol.min() / BULK:.2f}–{vol.max() / BULK:.2f} × bulk)")
                continue
            verts, faces, _, _ = marching_cubes(vol, level * BULK)
            height = translate[0] + verts[:, 0] * scale[0]
            added.append(self._viewer.add_surface(
                (verts, faces, height.astype(np.float32)), name=f"ρ = {level:g} ρ_bulk ({name})",
                scale=scale, translate=translate, units=("angstrom",) * 3, colormap=HEIGHT_COLORMAP,
                contrast_limits=HEIGHT_RANGE, opacity=min(0.9, 0.45 + 0.3 * k), shading="smooth",
                metadata={"hydrafm_derived": "isosurface", "isovalue": level, "colour": "height above the "
                          "top Ca plane (Å)"}))
        return added

    def add_peak_slices(self, *_: Any) -> list[Any]:
        """2D images of the density in the xy planes of the ρ(z) peaks."""
        from ..hydration.workflow import density_profile_peaks

        try:
            slab, dens, name = self.result()
        except ValueError as exc:
            self._fail(exc)
            return []
        z = dens.origin[2] + np.arange(dens.density.shape[2]) * dens.spacing[2]
        added = []
        for p in density_profile_peaks(dens, 3):
            k = int(np.argmin(np.abs(z - p)))
            added.append(self._viewer.add_image(
                dens.density[:, :, k].T, name=f"xy slice z = {z[k]:.1f} Å ({name})", scale=dens.spacing[1::-1],
                translate=dens.origin[1::-1], units=("angstrom",) * 2, colormap="viridis",
                metadata={"hydrafm_derived": "density slice", "z": float(z[k])}))
        return added

    def _on_export_clicked(self, *_: Any) -> None:
        self.export_cube(self.export_file.value)

    def export_cube(self, path: Any) -> Path | None:
        """Write the last density as a .cube; an existing file is replaced only after a Yes."""
        from ..hydration.workflow import write_density_cube

        try:
            slab, dens, _ = self.result()
            if path is None or str(path) in ("", "."):
                raise ValueError("Choose a file to export to.")
            target = Path(path)
            if target.suffix.lower() != ".cube":
                target = target.with_suffix(".cube")
            if target.exists() and not confirm(self.native, f"{target} exists. Replace it?"):
                self._set_info(f"Not exported: {target} exists.")
                return None
            out = write_density_cube(target, slab, dens, overwrite=True)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
            return None
        self._set_info(f"Exported the density to {out}")
        return out

    # ------------------------------------------------------------- helpers
    def _busy(self, busy: bool, message: str | None) -> None:
        self.predict_button.enabled = not busy
        self.progress.visible = busy
        self.progress.value = 0
        if message:
            self._set_info(message)

    def _set_info(self, text: str) -> None:
        self.info.value = text

    def _fail(self, exc: BaseException) -> None:
        report_error(exc, self.info)
