"""The Fine-tune panel under Xvfb with a tiny model: start, progress, plot, stop, resume, listed in Predict."""

from __future__ import annotations

import pytest

napari = pytest.importorskip("napari")
torch = pytest.importorskip("torch")

from hydrafm._layers import atoms_layer_data  # noqa: E402
from hydrafm._sample_data import sample_path  # noqa: E402
from hydrafm.io.xyz import read_xyz  # noqa: E402
from hydrafm.models.checkpoint import ModelInfo, save_checkpoint  # noqa: E402
from hydrafm.models.unet import StructureUNet, UNetConfig  # noqa: E402
from hydrafm.widgets.finetune import SOURCES, FinetuneWidget  # noqa: E402
from hydrafm.widgets.predict import PredictWidget  # noqa: E402

pytestmark = pytest.mark.gui
TINY = UNetConfig(base_channels=4)


@pytest.fixture
def models(tmp_path, monkeypatch):
    monkeypatch.setenv("HYDRAFM_DATA", str(tmp_path / "data"))
    folder = tmp_path / "data" / "models"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    save_checkpoint(folder / "tiny-base.pt", StructureUNet(TINY), ModelInfo(config=TINY))
    return folder


@pytest.fixture
def viewer_with_corrected_atoms(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("hydrafm", "water_bilayer")
    truth = read_xyz(sample_path("water_bilayer.xyz"))
    for k in range(3):  # three "corrected" results (the same atoms) on the sample stack
        data, kwargs, _ = atoms_layer_data(truth, f"corrected {k}", {"stack": "water bilayer (simulated)"})
        viewer.add_points(data, **kwargs)
    return viewer


def test_train_stop_resume_and_the_model_appears_in_predict(viewer_with_corrected_atoms, models, qtbot):
    viewer = viewer_with_corrected_atoms
    predict = PredictWidget(viewer)
    w = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(w)
    assert "tiny-base" in w.base.choices
    w.source.value = SOURCES[1]
    w.atoms_layers.value = [layer for layer in viewer.layers if layer._type_string == "points"]
    w.base.value = "tiny-base"
    w.name.value = "ice-ft"
    w.epochs.value = 40
    w.batch_size.value = 2
    w.val_fraction.value = 0.34
    w.start()
    assert w.train_button.text == "Stop"
    qtbot.waitUntil(lambda: len(w.plot.epochs) >= 1, timeout=120_000)
    assert w.progress.value > 0 and "F1" in w.info.value
    w._on_train_clicked()  # Stop
    qtbot.waitUntil(lambda: not w.running, timeout=120_000)
    assert "Stopped" in w.info.value and w.train_button.text == "Train"
    assert (models / "ice-ft.pt").exists() and (models / "ice-ft.last.pt").exists()
    assert (models / "ice-ft.md").exists()
    assert "ice-ft" in predict.model.choices  # listed at once
    assert w.resume_button.enabled
    done = len(w.plot.epochs)
    w.epochs.value = done + 1
    w.resume_button.changed.emit(True)
    qtbot.waitUntil(lambda: not w.running, timeout=120_000)
    assert "Saved ice-ft" in w.info.value, w.info.value
    assert w.plot.epochs[-1] == done + 1


def test_bad_data_and_names_are_reported_before_training(viewer_with_corrected_atoms, models, qtbot, tmp_path):
    viewer = viewer_with_corrected_atoms
    w = FinetuneWidget(viewer)
    w.base.value = "tiny-base"
    w.name.value = "water"  # a shipped model's name
    w.start()
    assert "shipped" in w.info.value and not w.running
    w.name.value = "ok-name"
    w.source.value = SOURCES[0]
    w.folder.value = tmp_path  # no structure files
    w.start()
    qtbot.waitUntil(lambda: not w.running, timeout=60_000)
    assert "no structure files" in w.info.value
    assert not (models / "ok-name.pt").exists()


def test_structures_folder_and_dataset_sources(make_napari_viewer, models, qtbot, tmp_path):
    from ase.io import write

    from test_training import fake_dataset

    viewer = make_napari_viewer()
    w = FinetuneWidget(viewer)
    assert w.random_tips.native.isHidden()  # only for a structures folder
    # (c) a dataset made by `hydrafm simulate` (here a fake one on a 0.2 Å grid, with a matching base)
    fake_dataset(tmp_path / "ds", n=8, shard=4)
    save_checkpoint(models / "base-02.pt", StructureUNet(TINY), ModelInfo(config=TINY, pixel_size=0.2))
    w.refresh_models()
    w.source.value = SOURCES[2]
    w.folder.value = tmp_path / "ds"
    w.base.value = "base-02"
    w.name.value = "from-dataset"
    w.epochs.value = 1
    w.batch_size.value = 4
    w.start()
    qtbot.waitUntil(lambda: not w.running, timeout=120_000)
    assert "Saved from-dataset" in w.info.value, w.info.value
    import sys

    opencl_before = "pyopencl" in sys.modules  # an earlier test may have loaded it
    # (a) a folder of structure files, simulated on the fly by the torch engine (no OpenCL in napari)
    folder = tmp_path / "structures"
    folder.mkdir()
    truth = read_xyz(sample_path("water_bilayer.xyz"))
    write(folder / "a.xyz", truth)
    write(folder / "b.xyz", truth[:36])
    w.source.value = SOURCES[0]
    assert not w.random_tips.native.isHidden() and not w.random_tips.value  # shown; off unless asked
    w.random_tips.value = True
    w.folder.value = folder
    w.per_structure.value = 1
    w.base.value = "tiny-base"
    w.name.value = "from-structures"
    w.batch_size.value = 1
    w.val_fraction.value = 0.5
    w.start()
    qtbot.waitUntil(lambda: not w.running, timeout=180_000)
    assert "Saved from-structures" in w.info.value, w.info.value
    assert "experiment-like tips" in (models / "from-structures.md").read_text()
    assert opencl_before or "pyopencl" not in sys.modules
