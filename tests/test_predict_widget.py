"""The Predict dock widget, driven for real under Xvfb: predict, cancel, errors, threshold, edit, verify, export."""

from __future__ import annotations

import re

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from hydrafm.io.xyz import LABELS, read_xyz  # noqa: E402
from hydrafm.models.checkpoint import ModelInfo, save_checkpoint  # noqa: E402
from hydrafm.models.unet import StructureUNet, UNetConfig  # noqa: E402
from hydrafm.predict.predictor import Prediction  # noqa: E402
from hydrafm.widgets._common import atoms_of_layer  # noqa: E402
from hydrafm.widgets.predict import PredictWidget  # noqa: E402

pytestmark = pytest.mark.gui
TINY = UNetConfig(base_channels=4, levels=3)


@pytest.fixture
def user_data(tmp_path, monkeypatch):
    monkeypatch.setenv("HYDRAFM_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


@pytest.fixture
def tiny_model(tmp_path):
    import torch

    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "tiny.pt", StructureUNet(TINY), ModelInfo(config=TINY))


@pytest.fixture
def widget(make_napari_viewer, user_data, qtbot):
    from hydrafm.widgets.predict import WARM_UP_NAME

    viewer = make_napari_viewer()
    viewer.open_sample("hydrafm", "water_bilayer")
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    qtbot.waitUntil(lambda: WARM_UP_NAME not in [layer.name for layer in viewer.layers], timeout=5000)
    return w


def _wait(qtbot, w, timeout=60_000):
    qtbot.waitUntil(lambda: not w.running, timeout=timeout)


def _peaks_prediction(n_labels=6) -> Prediction:
    """Maps with three O peaks of confidence 0.9, 0.6 and 0.3 on a 0.2 Å grid."""
    yy, xx = np.mgrid[0:100, 0:100] * 0.2
    maps = np.zeros((n_labels, 100, 100), np.float32)
    for (y, x), c in zip([(5, 5), (10, 10), (15, 15)], [0.9, 0.6, 0.3]):
        maps[0] += c * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 0.35**2))
    return Prediction(maps, (0.2, 0.2), (0.0, 0.0), ModelInfo(config=TINY), "synthetic")


def test_predict_adds_a_new_points_layer_each_run(widget, tiny_model, qtbot):
    viewer = widget._viewer
    widget.model_file.value = tiny_model
    widget.threshold.value = 0.05
    widget.show_maps.value = True
    widget.predict()
    assert widget.predict_button.text == "Cancel"
    _wait(qtbot, widget)
    assert widget.predict_button.text == "Predict"
    points = [layer for layer in viewer.layers if layer._type_string == "points"]
    assert len(points) == 1
    layer = points[0]
    assert set(layer.features.columns) >= {"label", "confidence"}
    assert sum(layer.name.endswith("map (water bilayer (simulated))") for layer in viewer.layers) == 6
    widget.predict()
    _wait(qtbot, widget)
    points = [layer for layer in viewer.layers if layer._type_string == "points"]
    assert len(points) == 2 and points[0].name != points[1].name


def test_cancel_stops_between_tiles(make_napari_viewer, user_data, tiny_model, qtbot):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    from hydrafm._layers import stack_layer_data
    from hydrafm.stack import AFMStack

    big = AFMStack(rng.normal(size=(10, 900, 900)).astype(np.float32), (25 / 128, 25 / 128), np.arange(10) * 0.1)
    data, kwargs, _ = stack_layer_data(big, "big")
    viewer.add_image(data, **kwargs)
    w = PredictWidget(viewer)
    w.model_file.value = tiny_model
    w.predict()
    qtbot.waitUntil(lambda: w.progress.value >= 1, timeout=60_000)
    w._on_predict_clicked()  # the button reads "Cancel" now
    _wait(qtbot, w)
    assert "cancel" in w.info.value.lower()
    from hydrafm.widgets.predict import WARM_UP_NAME

    assert not [layer for layer in viewer.layers if layer._type_string == "points" and layer.name != WARM_UP_NAME]
    assert w.predict_button.text == "Predict" and w.stack.enabled


def test_a_failing_model_is_reported_and_the_widget_resets(widget, tmp_path, qtbot):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    widget.model_file.value = junk
    widget.predict()
    _wait(qtbot, widget)
    assert "junk.pt" in widget.info.value
    assert widget.predict_button.text == "Predict" and widget.verify_button.enabled
    assert not [layer for layer in widget._viewer.layers if layer._type_string == "points"]


def test_no_model_at_all_is_a_clear_message(widget):
    widget._models = {}
    widget.model.reset_choices()
    widget.predict()
    assert "model" in widget.info.value.lower() and not widget.running


def test_threshold_refilters_without_the_network_until_edited(widget, qtbot):
    stack_layer = widget.stack.value
    widget.threshold.value = 0.5
    widget._on_prediction(_peaks_prediction(), None, None, stack_layer)
    _wait(qtbot, widget)
    layer = widget._last_result
    assert len(layer.data) == 6  # two whole waters
    widget.threshold.value = 0.2
    assert len(layer.data) == 9
    labels = layer.features["label"].astype(str).to_numpy()
    assert (labels == "O").sum() == 3 and all(v.startswith("H_") for v in labels[labels != "O"])
    o_conf = layer.features["confidence"][labels == "O"]
    np.testing.assert_allclose(sorted(o_conf), [0.3, 0.6, 0.9], atol=0.02)
    assert "3 molecules" in widget.info.value
    layer.add([2.0, 2.0])  # an edit: the threshold no longer rewrites the atoms
    widget.threshold.value = 0.7
    assert len(layer.data) == 10 and "edited" in widget.info.value


def test_edit_relabel_and_export_with_overwrite_confirmation(widget, tmp_path, qtbot):
    widget.select_molecules.value = False  # single atoms
    widget._on_prediction(_peaks_prediction(), None, None, widget.stack.value)
    _wait(qtbot, widget)
    layer = widget._last_result
    widget.new_label.value = "H_up"
    layer.add([8.0, 3.0])  # a new atom gets the chosen label and confidence 1
    assert str(layer.features["label"].iloc[-1]) == "H_up" and layer.features["confidence"].iloc[-1] == 1.0
    layer.selected_data = {0}
    widget.new_label.value = "Na"
    widget.relabel_selected()
    assert str(layer.features["label"].iloc[0]) == "Na"
    assert layer.size[0] > layer.size[-1]  # Na is drawn bigger than H
    out = widget.export(tmp_path / "atoms.xyz")
    atoms = read_xyz(out)
    labels = list(atoms.arrays["label"])
    assert len(labels) == 7 and labels[:2] == ["Na", "O"] and labels[-1] == "H_up"  # two waters and an H
    np.testing.assert_allclose(atoms.positions[-1], [3.0, 8.0, 0.0])  # added by hand: z = 0
    assert atoms.arrays["mol"][-1] == -1 and len(set(atoms.arrays["mol"][:6])) == 2  # the added H: no molecule
    assert set(atoms.arrays["label"]) <= set(LABELS)
    before = out.read_text()
    layer.selected_data = {1}
    layer.remove_selected()
    widget._confirm = lambda question: False
    assert widget.export(out) is None and out.read_text() == before
    widget._confirm = lambda question: True
    widget.export(out)
    assert len(read_xyz(out)) == 6


def _mouse(layer, kind: str, position, dragging: bool = False) -> None:
    """A napari mouse event on the layer in the 2D view (as napari's own tests send them)."""
    from dataclasses import dataclass, field

    from napari.utils._proxies import ReadOnlyWrapper
    from napari.utils.interactions import mouse_move_callbacks, mouse_press_callbacks, mouse_release_callbacks

    @dataclass
    class Event:
        type: str
        is_dragging: bool = False
        modifiers: list = field(default_factory=list)
        position: tuple = ()
        pos: np.ndarray = field(default_factory=lambda: np.zeros(2))
        view_direction: None = None
        up_direction: None = None
        dims_displayed: list = field(default_factory=lambda: [0, 1])

    event = ReadOnlyWrapper(Event(kind, dragging, position=tuple(position)), exceptions=("handled",))
    {"mouse_press": mouse_press_callbacks, "mouse_move": mouse_move_callbacks,
     "mouse_release": mouse_release_callbacks}[kind](layer, event)


def test_select_move_and_delete_whole_molecules(widget, qtbot):
    widget.threshold.value = 0.2
    widget._on_prediction(_peaks_prediction(), None, None, widget.stack.value)
    _wait(qtbot, widget)
    layer = widget._last_result
    mol = layer.features["mol"].to_numpy()
    assert len(layer.data) == 9 and sorted(np.bincount(mol)) == [3, 3, 3]
    h = int(np.flatnonzero(layer.features["label"].astype(str).str.startswith("H").to_numpy())[0])
    water = set(np.flatnonzero(mol == mol[h]).tolist())
    layer.mode = "select"
    before = layer.data.copy()
    _mouse(layer, "mouse_press", before[h])  # click one H: its whole water is selected
    assert set(layer.selected_data) == water
    _mouse(layer, "mouse_move", before[h] + [1.0, -2.0], dragging=True)  # drag: the water moves as one
    _mouse(layer, "mouse_release", before[h] + [1.0, -2.0])
    moved = np.flatnonzero(np.any(layer.data != before, axis=1))
    assert set(moved.tolist()) == water
    np.testing.assert_allclose(layer.data[sorted(water)] - before[sorted(water)], [[1.0, -2.0]] * 3, atol=1e-6)
    assert widget._results[id(layer)][1]  # counts as an edit
    other = int(mol[mol != mol[h]][0])
    layer.selected_data = {int(np.flatnonzero(mol == other)[-1])}  # picking any atom of another water
    assert len(layer.selected_data) == 3
    layer.remove_selected()  # deleting removes the whole molecule
    left = layer.features["mol"].to_numpy()
    assert len(layer.data) == 6 and other not in left and sorted(np.unique(left, return_counts=True)[1]) == [3, 3]
    widget.select_molecules.value = False  # single atoms again
    layer.selected_data = {0}
    assert set(layer.selected_data) == {0}


def test_user_models_are_listed_with_their_summary(widget, user_data, tiny_model):
    import shutil

    (user_data / "models").mkdir(parents=True)
    shutil.copy(tiny_model, user_data / "models" / "my-ice.pt")
    shutil.copy(tiny_model, user_data / "models" / "my-ice.last.pt")
    widget.refresh_models()
    assert "my-ice" in widget.model.choices and "my-ice.last" not in widget.model.choices
    widget.model.value = "my-ice"
    assert widget.model.tooltip
    assert widget.chosen_model() == user_data / "models" / "my-ice.pt"


def test_unusable_device_falls_back_to_cpu_with_a_notice():
    import torch

    from hydrafm.training.train import usable_device

    dev, notice = usable_device("cpu")
    assert dev.type == "cpu" and notice is None
    if not torch.cuda.is_available():
        dev, notice = usable_device("cuda")
        assert dev.type == "cpu" and "cuda" in notice.lower()


def test_verify_simulates_the_atoms_and_scores_them(widget, qtbot):
    from hydrafm._sample_data import sample_path
    from hydrafm._layers import atoms_layer_data
    viewer = widget._viewer
    truth = read_xyz(sample_path("water_bilayer.xyz"))
    data, kwargs, _ = atoms_layer_data(truth, "truth", {"stack": "water bilayer (simulated)"})
    viewer.add_points(data, **kwargs)
    import sys

    opencl_before = "pyopencl" in sys.modules  # an earlier test may have loaded it
    widget.verify()
    _wait(qtbot, widget, 120_000)
    names = [layer.name for layer in viewer.layers]
    assert "simulated (water bilayer (simulated))" in names and "residual (water bilayer (simulated))" in names
    assert opencl_before or "pyopencl" not in sys.modules  # the default (torch) engine: no OpenCL in napari
    score = float(widget.info.value.split()[1])
    assert score > 0.9  # the true structure reproduces its own stack
    shifted = truth.copy()
    shifted.positions[:, 0] += 1.2
    data, kwargs, _ = atoms_layer_data(shifted, "shifted", {"stack": "water bilayer (simulated)"})
    viewer.add_points(data, **kwargs)
    widget.verify()
    _wait(qtbot, widget, 120_000)
    assert float(widget.info.value.split()[1]) < score - 0.1


def test_whole_loop_on_a_real_water_scan(make_napari_viewer, user_data, tiny_model, testdata, qtbot, tmp_path):
    """Jiang lab water on Au(111) (ml-spm layout, 12 frames, 256 px over 32 Å): open, predict, edit, export."""
    viewer = make_napari_viewer()
    viewer.open(str(testdata / "jiang_lab_water_Au111" / "L1_20_L2_1Ying_Jiang_1.npz"), plugin="hydrafm")
    w = PredictWidget(viewer)
    assert w.stack.value is viewer.layers[0]
    w.model_file.value = tiny_model
    w.threshold.value = 0.05
    w.predict()
    _wait(qtbot, w)
    layer = w._last_result
    assert layer is not None and "Error" not in w.info.value
    extent = np.asarray(viewer.layers[0].extent.world)[:, 1:]
    if len(layer.data):  # atoms fall inside the scan, in Å
        assert np.all(layer.data >= extent[0] - 1) and np.all(layer.data <= extent[1] + 1)
    layer.add([16.0, 16.0])
    out = w.export(tmp_path / "real.xyz")
    assert len(read_xyz(out)) == len(layer.data)


def test_molecules_at_their_depth_unless_unticked(widget, qtbot, tmp_path, monkeypatch):
    import torch

    import hydrafm.predict.depth as depth_mod
    from hydrafm.models.depth import DepthInfo, DepthNet, save_depth
    from hydrafm.models.registry import model_path
    from hydrafm.models.checkpoint import load_checkpoint

    info = load_checkpoint(model_path("water"))[1]
    net = DepthNet(DepthInfo(base_channels=4, levels=2, pixel_size=info.pixel_size))
    torch.nn.init.normal_(net.net.head.weight, std=0.5)  # depths that vary across the scan
    monkeypatch.setattr(depth_mod, "shipped_depth_path", lambda: save_depth(tmp_path / "depth.pt", net))
    depth_mod._DEPTH_NETS.clear()
    widget.model.value = "water"

    def heavy_z():
        layer = widget._last_result
        return atoms_of_layer(layer).positions[np.isin(np.asarray(layer.features["label"]).astype(str),
                                                        ["O", "Na", "K"]), 2]

    assert widget.depth.value  # on by default
    widget.predict()
    _wait(qtbot, widget)
    z = heavy_z()
    assert z.max() == pytest.approx(0.0, abs=1e-6) and z.min() < -0.05
    layer = widget._last_result
    assert layer.ndim == 2  # every atom is drawn over every frame of the stack, whatever its depth
    out = widget.export(tmp_path / "deep.xyz")
    exported = read_xyz(out).positions[:, 2]
    np.testing.assert_allclose(exported, atoms_of_layer(layer).positions[:, 2], atol=1e-6)
    # the estimated closest probe goes with the atoms: to the .xyz and to Refine (its tip search starts there)
    assert read_xyz(out).info["closest_probe"] == pytest.approx(atoms_of_layer(layer).info["closest_probe"])
    widget.depth.value = False
    widget.predict()
    _wait(qtbot, widget)
    assert np.allclose(heavy_z(), 0.0)
    assert "closest_probe" not in atoms_of_layer(widget._last_result).info


def test_denoise_first_runs_the_shipped_denoiser(widget, tiny_model, qtbot, tmp_path, monkeypatch):
    import hydrafm.predict.predictor as predictor
    from hydrafm.models.denoise import Denoiser, DenoiserInfo, save_denoiser

    den = save_denoiser(tmp_path / "denoise.pt", Denoiser(DenoiserInfo(base_channels=4, levels=2)))
    monkeypatch.setattr(predictor, "shipped_denoiser_path", lambda: den)
    calls = []
    real = predictor.denoise_normalized
    monkeypatch.setattr(predictor, "denoise_normalized", lambda x, d, **kw: calls.append(x.shape) or real(x, d, **kw))
    widget.model_file.value = tiny_model
    widget.predict()
    _wait(qtbot, widget)
    assert calls == []  # off by default (the tiny model's card does not ask for it)
    widget.denoise.value = True
    widget.predict()
    _wait(qtbot, widget)
    assert len(calls) == 1
    assert sum(layer._type_string == "points" for layer in widget._viewer.layers) == 2
    monkeypatch.setattr(predictor, "shipped_denoiser_path", lambda: tmp_path / "missing.pt")
    predictor._DENOISERS.clear()
    widget.predict()
    _wait(qtbot, widget)
    assert "missing.pt" in widget.info.value and widget.predict_button.text == "Predict"


def test_checks_run_when_ticked_and_the_threshold_keeps_them(widget, qtbot, tmp_path, monkeypatch):
    import hydrafm.predict.predictor as predictor
    from hydrafm.models.o_check import OCheckInfo, OCheckNet, save_o_check

    # a stand-in for the shipped O check, so that the test runs whether or not weights ship
    monkeypatch.setattr(predictor, "shipped_o_check_path", lambda: save_o_check(tmp_path / "o.pt",
                                                                                OCheckNet(OCheckInfo(width=4))))
    predictor._CHECKS.clear()
    widget.model.value = "water"
    # the boxes start as the picked model's card says (water's asks for the O check, not the bond ends)
    from hydrafm.models.registry import list_models
    card = {m.name: m for m in list_models()}["water"]
    assert (widget.o_check.value, widget.bond_ends.value) == (card.o_check, card.bond_ends)
    widget.o_check.value = widget.bond_ends.value = False  # unticked: neither check, whatever the card says
    widget.predict()
    _wait(qtbot, widget)
    first = widget._last_result.metadata["hydrafm_atoms"]
    assert first.get("bond_ends") is None and first.get("o_check") is None
    widget.bond_ends.value = True
    widget.o_check.value = True
    widget.predict()
    _wait(qtbot, widget)
    layer = widget._last_result
    said = layer.metadata["hydrafm_atoms"]
    for key, name in (("bond_ends", "H-bond ends"), ("o_check", "O check")):
        assert re.fullmatch(r"\d+ moved, \d+ dropped of \d+", said[key]) and name in widget.info.value
    widget.bond_ends.value = widget.o_check.value = False  # the slider re-applies the checks the result was made with
    widget.threshold.value = round(widget.threshold.value + 0.05, 2)
    assert layer.metadata["hydrafm_atoms"]["bond_ends"] and layer.metadata["hydrafm_atoms"]["o_check"]


def test_a_check_box_says_none_where_the_card_asks_so_a_cards_own_check_file_is_kept():
    from hydrafm.widgets.predict import _check_switch

    assert _check_switch(True, True) is None  # the card's choice (its own file, if it names one)
    assert _check_switch(True, False) is True  # the shipped check, which the card does not ask for
    assert _check_switch(False, True) is False and _check_switch(False, False) is False
