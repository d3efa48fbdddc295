"""Maps → atoms, metrics, and whole-scan prediction plumbing (tiny untrained models)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hydrafm.io.xyz import LABELS  # noqa: E402
from hydrafm.models.checkpoint import CheckpointError, ModelInfo  # noqa: E402
from hydrafm.models.unet import StructureUNet, UNetConfig  # noqa: E402
from hydrafm.predict.atoms import maps_to_atoms  # noqa: E402
from hydrafm.predict.metrics import score_atoms  # noqa: E402
from hydrafm.predict.predictor import predict_atoms, predict_maps, resolve_model, select_heights  # noqa: E402
from hydrafm.simulate.labels import label_maps  # noqa: E402
from hydrafm.stack import AFMStack  # noqa: E402


def water_truth():
    pos = np.array([[5.0, 5.0, 0.0], [5.9, 5.0, 0.0], [5.0, 5.5, 0.8],   # O, H_flat, H_up
                    [10.0, 8.0, 0.1], [10.5, 8.6, -0.6], [10.8, 7.6, 0.05],  # O, H_down, H_flat
                    [3.0, 11.0, 0.2]])  # Na
    labels = np.array(["O", "H_flat", "H_up", "O", "H_down", "H_flat", "Na"])
    return pos, labels


def test_maps_to_atoms_recovers_atoms_labels_and_heights():
    pos, labels = water_truth()
    maps = label_maps(pos, labels, (70, 70), 0.2, sigma=0.35)
    atoms = maps_to_atoms(maps, 0.2)
    assert sorted(atoms.arrays["label"]) == sorted(labels)
    s = score_atoms(atoms.positions[:, :2], atoms.arrays["label"], pos, labels).summary()
    assert s["O"]["f1"] == 1.0 and s["H"]["f1"] == 1.0 and s["Na"]["f1"] == 1.0 and s["H_orientation"] == 1.0
    up = atoms.positions[atoms.arrays["label"] == "H_up"][0]
    down = atoms.positions[atoms.arrays["label"] == "H_down"][0]
    assert up[2] > 0.3 and down[2] < -0.3
    assert np.all(atoms.arrays["confidence"] > 0.9)


def test_peaks_land_on_the_atoms_to_a_hundredth_of_an_angstrom():
    # blobs as the network is trained to draw them, at positions between pixel centres (0.2 Å pixels)
    pos = np.array([[3.07, 4.13, 0.0], [7.55, 2.91, 0.0], [5.18, 8.64, 0.0]])
    labels = np.array(["O", "O", "O"])
    maps = label_maps(pos, labels, (60, 60), 0.2, sigma=0.35)
    atoms = maps_to_atoms(maps, 0.2)
    found = atoms.positions[np.argsort(atoms.positions[:, 0]), :2]
    assert np.abs(found - pos[np.argsort(pos[:, 0]), :2]).max() < 0.01


def test_competing_h_classes_merge_to_the_most_confident():
    maps = np.zeros((len(LABELS), 30, 30), np.float32)
    maps[LABELS.index("H_up"), 10, 10] = 0.9
    maps[LABELS.index("H_flat"), 10, 11] = 0.7
    atoms = maps_to_atoms(maps, 0.2)
    assert atoms.arrays["label"].tolist() == ["H_up"]


def test_metrics_count_fp_fn_and_ignore_deep_atoms():
    true = np.array([[0, 0, 0], [5, 0, 0], [10, 0, -4.0]])  # the last is 4 Å below the top
    s = score_atoms(np.array([[0.3, 0.2], [7, 7]]), ["O", "O"], true, ["O", "O", "O"]).summary()
    assert s["O"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "true": 2, "predicted": 2, "deeper": 0}
    s = score_atoms(np.array([[0.8, 0]]), ["O"], true[:1], ["O"]).summary()
    assert s["O"]["f1"] == 0.0  # 0.8 Å is beyond the 0.75 Å match radius


def test_metrics_do_not_score_predictions_on_visible_atoms_below_the_cut():
    # a bilayer: the top O at 0, the lower one 2 Å down, a deep one 4 Å down; cut at 1.5 Å
    true = np.array([[0, 0, 0], [3, 0, -2.0], [6, 0, -4.0]])
    pred = np.array([[0.1, 0], [3.2, 0], [6.1, 0], [9, 9]])
    s = score_atoms(pred, ["O"] * 4, true, ["O"] * 3, top=1.5).summary()["O"]
    # the lower O is visible (within 3 Å): not scored; the deep one and the empty spot are false positives
    assert (s["true"], s["predicted"], s["deeper"], s["recall"]) == (1, 3, 1, 1.0)
    assert s["precision"] == round(1 / 3, 4)
    strict = score_atoms(pred, ["O"] * 4, true, ["O"] * 3, top=1.5, visible=None).summary()["O"]
    assert (strict["predicted"], strict["deeper"]) == (4, 0)
    # a label must match: an H on the lower O is a false positive; a required atom is matched first
    s = score_atoms(np.array([[3.0, 0]]), ["H_up"], true, ["O"] * 3, top=1.5).summary()
    assert s["H"]["predicted"] == 1 and s["H"]["deeper"] == 0
    s = score_atoms(np.array([[0.1, 0]]), ["O"], np.array([[0, 0, 0], [0.2, 0, -2.0]]), ["O", "O"], top=1.5)
    assert s.tp["O"] == 1 and s.deeper["O"] == 0


def test_select_heights():
    stack = AFMStack(np.arange(20, dtype=np.float32)[:, None, None] * np.ones((20, 4, 4)), (1, 1),
                     heights=np.arange(20) * 0.05)
    out = select_heights(stack, 10, 0.1)
    assert out.shape == (10, 4, 4) and out[1, 0, 0] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="multi-height"):
        select_heights(AFMStack(np.zeros((1, 4, 4)), (1, 1)), 10, 0.1)


def test_whole_scan_prediction_any_size_and_pixel_size():
    cfg = UNetConfig(base_channels=4, levels=2)
    net, info = StructureUNet(cfg).eval(), ModelInfo(config=cfg, pixel_size=0.2)
    stack = AFMStack(np.random.default_rng(0).normal(size=(10, 150, 90)).astype(np.float32), (0.1, 0.1),
                     heights=np.arange(10) * 0.1, origin=(3.0, -2.0))
    maps, px, origin, _ = predict_maps(stack, (net, info), tile=48, overlap=16)
    assert maps.shape == (6, 75, 45) and px == pytest.approx((0.2, 0.2))
    assert origin == pytest.approx((3.05, -1.95))
    assert np.all((maps >= 0) & (maps <= 1))
    atoms = predict_atoms(stack, (net, info), threshold=0.99)
    assert set(atoms.arrays) >= {"label", "confidence", "mol", "shell"}  # whole molecules by default
    loose = predict_atoms(stack, (net, info), threshold=0.99, molecules=False)
    assert set(loose.arrays) >= {"label", "confidence"} and "mol" not in loose.arrays


def test_unknown_and_unshipped_model_names_are_clear_errors(tmp_path, monkeypatch):
    from hydrafm.models import registry

    monkeypatch.setenv("HYDRAFM_DATA", str(tmp_path))
    with pytest.raises(CheckpointError, match="no model named 'my-ice'"):
        resolve_model("my-ice")
    monkeypatch.setattr(registry, "WEIGHTS", tmp_path / "no-weights")
    with pytest.raises(CheckpointError, match="not shipped"):
        resolve_model("na-hydrate")


def test_cli_train_evaluate_predict(tmp_path, capsys, monkeypatch):
    import json

    from hydrafm._sample_data import sample_path
    from hydrafm.cli import main
    from hydrafm.predict import predictor
    from test_training import fake_dataset

    fake_dataset(tmp_path / "ds")
    ckpt = tmp_path / "m.pt"
    assert main(["train", str(tmp_path / "ds"), "-o", str(ckpt), "--epochs", "1", "--base-channels", "4",
                 "--crop", "0", "--device", "cpu"]) == 0
    epoch = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert epoch["epoch"] == 1 and epoch["device"] == "cpu"
    assert main(["evaluate", str(tmp_path / "ds"), "--model", str(ckpt), "-n", "2", "--threshold", "0.3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["stacks"] == 2 and "O" in summary
    assert main(["evaluate", str(tmp_path / "ds"), "--model", str(ckpt), "-n", "2", "--threshold", "0.3",
                 "--top", "1.0", "--visible", "0"]) == 0
    strict = json.loads(capsys.readouterr().out)
    assert strict["visible"] == 0 and strict["O"]["deeper"] == 0
    checked = []  # evaluate takes predict's check switches (the O check: --o-check / --no-o-check)

    def spy(loose, *args, **kwargs):
        checked.append(len(loose))
        return loose, {"checked": 0, "dropped": 0, "moved": 0}

    monkeypatch.setattr(predictor, "check_o_peaks", spy)
    assert main(["evaluate", str(tmp_path / "ds"), "--model", str(ckpt), "-n", "2", "--threshold", "0.3",
                 "--no-o-check"]) == 0
    capsys.readouterr()
    assert not checked
    assert main(["evaluate", str(tmp_path / "ds"), "--model", str(ckpt), "-n", "2", "--threshold", "0.3",
                 "--o-check"]) == 0
    capsys.readouterr()
    assert len(checked) == 2  # once per stack
    out = tmp_path / "atoms.xyz"
    assert main(["predict", str(sample_path()), "-o", str(out), "--model", str(ckpt), "--threshold", "0.3"]) == 0
    assert out.exists() and json.loads(capsys.readouterr().out)["output"] == str(out)
    from hydrafm.io.xyz import read_xyz

    assert "mol" in read_xyz(out).arrays
    loose = tmp_path / "loose.xyz"
    assert main(["predict", str(sample_path()), "-o", str(loose), "--model", str(ckpt), "--loose-atoms"]) == 0
    assert "mol" not in read_xyz(loose).arrays
    capsys.readouterr()
    assert main(["predict", str(sample_path()), "-o", str(out), "--model", str(ckpt)]) == 2  # no overwrite
    assert "exists" in capsys.readouterr().err
    assert main(["predict", str(sample_path()), str(sample_path()), "-o", str(out), "--model", str(ckpt)]) == 2
    assert "folder" in capsys.readouterr().err
    # a bad scan among several is named with its reason; the others are still predicted and written
    from hydrafm.io import load_stack
    from hydrafm.io.npz import save_npz

    one = load_stack(sample_path())
    flat = save_npz(replace(one, data=one.data[:1], heights=None), tmp_path / "flat.npz")
    folder = tmp_path / "batch"
    assert main(["predict", str(flat), str(sample_path()), "-o", str(folder), "--model", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert f"{flat}: prediction needs a multi-height stack" in err and "1 of 2 stacks failed" in err
    assert (folder / f"{Path(sample_path()).stem}.xyz").exists() and not (folder / "flat.xyz").exists()
    assert main(["predict", str(flat), "-o", str(tmp_path / "one.xyz"), "--model", str(ckpt)]) == 2
    assert str(flat) in capsys.readouterr().err


def test_mirror_averaging_is_equivariant():
    torch = pytest.importorskip("torch")
    from hydrafm.models.unet import StructureUNet, UNetConfig
    from hydrafm.predict.predictor import predict_maps
    from hydrafm.stack import AFMStack

    torch.manual_seed(0)
    cfg = UNetConfig(base_channels=4)
    net, info = StructureUNet(cfg), ModelInfo(config=cfg, pixel_size=0.2)
    data = np.random.default_rng(0).normal(size=(10, 64, 64)).astype(np.float32)
    a = predict_maps(AFMStack(data, (0.2, 0.2), np.arange(10) * 0.1), (net, info), flips=True)[0]
    b = predict_maps(AFMStack(data[:, :, ::-1].copy(), (0.2, 0.2), np.arange(10) * 0.1), (net, info), flips=True)[0]
    np.testing.assert_allclose(a, b[:, :, ::-1], atol=1e-5)
    plain = predict_maps(AFMStack(data, (0.2, 0.2), np.arange(10) * 0.1), (net, info))[0]
    assert not np.allclose(a, plain, atol=1e-4)
    # a model that recommends mirror averaging gets it by default; False still turns it off
    info.provenance["flips"] = True
    st = AFMStack(data, (0.2, 0.2), np.arange(10) * 0.1)
    np.testing.assert_allclose(predict_maps(st, (net, info))[0], a, atol=1e-6)
    np.testing.assert_allclose(predict_maps(st, (net, info), flips=False)[0], plain, atol=1e-6)


def test_a_model_that_reports_no_ions_gives_no_na_or_k():
    from hydrafm.models.unet import UNetConfig
    from hydrafm.predict.predictor import Prediction, reports_ions

    cfg = UNetConfig(base_channels=4)
    info = ModelInfo(config=cfg, pixel_size=0.2)
    labels = list(info.labels)
    maps = np.zeros((len(labels), 64, 64), np.float32)
    yy, xx = np.mgrid[0:64, 0:64]
    blob = lambda r, c: np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / 4.0)  # noqa: E731
    maps[labels.index("O")] = blob(20, 20)
    maps[labels.index("Na")] = blob(40, 40)
    pred = Prediction(maps, (0.2, 0.2), (0.0, 0.0), info)
    assert reports_ions(info) and "Na" in pred.atoms(0.5, molecules=False).arrays["label"]
    info.provenance["ions"] = False
    lab = pred.atoms(0.5, molecules=False).arrays["label"]
    assert "Na" not in lab and "O" in lab
    assert pred.maps[labels.index("Na")].max() > 0.9  # the maps themselves are untouched


def test_a_models_label_margins_raise_its_ion_threshold_whichever_threshold_is_given():
    from hydrafm.models.unet import UNetConfig
    from hydrafm.predict.atoms import label_threshold
    from hydrafm.predict.predictor import Prediction, label_margins

    info = ModelInfo(config=UNetConfig(base_channels=4), pixel_size=0.2)
    labels = list(info.labels)
    maps = np.zeros((len(labels), 64, 64), np.float32)
    yy, xx = np.mgrid[0:64, 0:64]
    blob = lambda r, c: np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / 4.0)  # noqa: E731
    maps[labels.index("O")] = 0.6 * blob(12, 12)
    maps[labels.index("Na")] = 0.6 * blob(32, 32) + 0.85 * blob(50, 50)  # a doubtful and a sure Na
    pred = Prediction(maps, (0.2, 0.2), (0.0, 0.0), info)
    count = lambda atoms, name: int((atoms.arrays["label"] == name).sum())  # noqa: E731
    assert label_margins(info) == {} and count(pred.atoms(0.5), "Na") == 2
    info.provenance["label_margins"] = {"Na": 0.2}
    atoms = pred.atoms(0.5)
    assert count(atoms, "Na") == 1 and count(atoms, "O") == 1  # the O (0.6) still passes 0.5
    assert atoms.info["threshold"] == 0.5 and atoms.info["threshold_Na"] == pytest.approx(0.7)
    assert count(pred.atoms(0.35), "Na") == 2  # a lower threshold lowers the Na threshold with it (0.55)
    assert count(pred.atoms(0.9), "Na") == 0 and label_threshold(0.9, "Na", {"Na": 0.2}) == 0.99
    assert label_threshold(0.4, "O", {"O": -0.1}) == pytest.approx(0.3) and label_threshold(0.05, "O", {"O": -0.1}) == 0.01


def test_a_models_summary_names_its_label_margins():
    from hydrafm.models.registry import _summary

    assert "recommended threshold 0.50; Na needs +0.20" in _summary({"threshold": 0.5, "label_margins": {"Na": 0.2}})
    assert "Na needs +0.20; inferred H favour H_down (+0.40)" in _summary(
        {"threshold": 0.5, "label_margins": {"Na": 0.2}, "assembly_prior": {"H_down": 0.4}})
    assert _summary({"threshold": 0.4}).endswith("recommended threshold 0.40")


def test_a_models_assembly_prior_classes_the_h_it_infers():
    from hydrafm.models.unet import UNetConfig
    from hydrafm.predict.predictor import Prediction, assembly_prior

    info = ModelInfo(config=UNetConfig(base_channels=4), pixel_size=0.2)
    labels = list(info.labels)
    maps = np.zeros((len(labels), 64, 64), np.float32)
    yy, xx = np.mgrid[0:64, 0:64]
    maps[labels.index("O")] = np.exp(-((yy - 30) ** 2 + (xx - 30) ** 2) / 4.0)  # a lone O: both H inferred
    pred = Prediction(maps, (0.2, 0.2), (0.0, 0.0), info)
    assert assembly_prior(info) is None
    default = list(pred.atoms(0.5).arrays["label"])
    assert default.count("O") == 1 and "H_down" not in default  # the assembly's own tie-breakers: up, then level
    info.provenance["assembly_prior"] = {"H_down": 0.4}
    assert assembly_prior(info) == {"H_down": 0.4}
    down = list(pred.atoms(0.5).arrays["label"])
    assert down.count("O") == 1 and "H_down" in down and "H_up" not in down
    assert list(pred.atoms(0.5, molecules=False).arrays["label"]) == ["O"]  # loose atoms: nothing inferred
