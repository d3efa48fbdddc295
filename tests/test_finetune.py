"""Fine-tuning: the three data sources, saving in the user data folder, stop/resume, bad data."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hydrafm._sample_data import sample_path  # noqa: E402
from hydrafm.io import load_stack  # noqa: E402
from hydrafm.io.xyz import read_xyz  # noqa: E402
from hydrafm.models.checkpoint import ModelInfo, load_checkpoint, save_checkpoint  # noqa: E402
from hydrafm.models.unet import StructureUNet, UNetConfig  # noqa: E402
from hydrafm.stack import AFMStack  # noqa: E402
from hydrafm.training.finetune import ModelExistsError, check_model_name, finetune  # noqa: E402
from hydrafm.training.sources import TrainingDataError, stack_atom_samples  # noqa: E402
from hydrafm.training.train import EpochStats, TrainConfig  # noqa: E402

TINY = UNetConfig(base_channels=4)
CFG = TrainConfig(epochs=2, batch_size=2, crop=32, device="cpu", epoch_scores=True, patience=5)


@pytest.fixture
def user_data(tmp_path, monkeypatch):
    monkeypatch.setenv("HYDRAFM_DATA", str(tmp_path / "data"))
    return tmp_path / "data" / "models"


@pytest.fixture
def base(tmp_path):
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "base.pt", StructureUNet(TINY), ModelInfo(config=TINY, pixel_size=25 / 128))


def _pairs():
    stack = load_stack(sample_path())
    atoms = read_xyz(sample_path("water_bilayer.xyz"))
    half = AFMStack(stack.data[:, :, :72], stack.pixel_size, stack.heights, stack.origin)
    return [(stack, atoms), (half, atoms), (stack, atoms)]


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_corrected_scans_finetune_into_the_user_folder_with_a_card(user_data, base):
    before = _digest(base)
    data = stack_atom_samples(_pairs(), 25 / 128, 0.1, 10)
    assert len(data) == 3 and data[1].stack.shape[1:] == (128, 72)
    recs = list(finetune(data, "my-ice", base, CFG, val_fraction=0.34))
    epochs = [r for r in recs if isinstance(r, EpochStats)]
    assert len(epochs) == 2 and epochs[0].scores is not None and "O" in epochs[0].scores
    out = user_data / "my-ice.pt"
    _, info, _ = load_checkpoint(out)
    assert info.provenance["summary"].startswith("fine-tuned from base")
    assert "| O |" in out.with_suffix(".md").read_text()
    assert _digest(base) == before  # the base model is only read
    with pytest.raises(ModelExistsError, match="my-ice"):
        list(finetune(data, "my-ice", base, CFG))


def test_stopped_run_resumes_to_the_same_weights(user_data, base):
    data = stack_atom_samples(_pairs(), 25 / 128, 0.1, 10)
    list(finetune(data, "straight", base, CFG, val_fraction=0.34))
    gen = finetune(data, "stopped", base, CFG, val_fraction=0.34)
    for rec in gen:
        if isinstance(rec, EpochStats):
            break
    gen.close()  # Stop after the first epoch
    assert (user_data / "stopped.last.pt").exists()
    list(finetune(data, "stopped", base, CFG, val_fraction=0.34, resume=True))
    a, _, _ = load_checkpoint(user_data / "straight.last.pt")
    b, _, _ = load_checkpoint(user_data / "stopped.last.pt")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, msg=k)


def test_bad_training_data_is_refused_before_training(base, user_data):
    stack, atoms = _pairs()[0]
    far = atoms.copy()
    far.positions[:, 0] += 100
    with pytest.raises(TrainingDataError, match="outside|none of the atoms"):
        stack_atom_samples([(stack, far)], 25 / 128, 0.1, 10, names=["scan 3"])
    with pytest.raises(TrainingDataError, match="no atoms"):
        stack_atom_samples([(stack, atoms[:0])], 25 / 128, 0.1, 10)
    one = AFMStack(stack.data[:1], stack.pixel_size)
    with pytest.raises(TrainingDataError, match="one frame"):
        stack_atom_samples([(one, atoms)], 25 / 128, 0.1, 10)
    for bad in ("water", "../x", "a b", ""):
        with pytest.raises(ValueError):
            check_model_name(bad)


def test_structures_are_simulated_on_the_fly(tmp_path, user_data):
    from ase.io import write

    from hydrafm.simulate.settings import SimulationSettings
    from hydrafm.training.sources import simulate_structures
    from hydrafm.progress import drive

    atoms = read_xyz(sample_path("water_bilayer.xyz"))
    folder = tmp_path / "structures"
    folder.mkdir()
    write(folder / "bilayer.xyz", atoms)
    sub = atoms[:30]
    write(folder / "part.cif", sub)
    (folder / "notes.txt").write_text("ignored")
    settings = SimulationSettings(n_pixels=64, scan_size=12.5)
    data = drive(simulate_structures(folder, per_structure=2, settings=settings), show=False)
    assert len(data) == 4 and data[0].stack.shape == (10, 64, 64)
    assert data.manifest["files"] == [str(folder / "bilayer.xyz"), str(folder / "part.cif")]
    assert "tips" not in data.manifest
    # experiment-like tips: the same structures, other tips and scans
    from hydrafm.simulate.settings import TipRanges

    rt = drive(simulate_structures(folder, per_structure=2, settings=settings, tips=TipRanges()), show=False)
    assert len(rt) == 4 and TipRanges.from_dict(rt.manifest["tips"]) == TipRanges()
    assert not np.allclose(rt[0].stack, data[0].stack)
    (folder / "junk.xyz").write_text("not a structure")
    with pytest.raises(TrainingDataError, match="junk.xyz"):
        drive(simulate_structures(folder, per_structure=1, settings=settings), show=False)


def test_cli_finetune_from_a_dataset(tmp_path, user_data, base, capsys):
    from hydrafm.cli import main
    from test_training import fake_dataset

    fake_dataset(tmp_path / "ds", n=8, shard=4)
    # the fake dataset's grid is 0.2 Å/px: a base model on that grid
    torch.manual_seed(0)
    base2 = save_checkpoint(tmp_path / "b2.pt", StructureUNet(TINY), ModelInfo(config=TINY, pixel_size=0.2))
    assert main(["finetune", str(tmp_path / "ds"), "--name", "from-ds", "--base", str(base2), "--epochs", "1",
                 "--batch-size", "4", "--crop", "0", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[0])["epoch"] == 1 and json.loads(lines[-1])["path"].endswith("from-ds.pt")
    assert main(["finetune", str(tmp_path / "ds"), "--name", "from-ds", "--base", str(base2)]) == 2
    assert "exists" in capsys.readouterr().err
    # a grid mismatch is a clear error
    assert main(["finetune", str(tmp_path / "ds"), "--name", "other", "--base", str(base)]) == 2
    assert "grid" in capsys.readouterr().err


def test_the_finetune_labels_only_what_the_base_model_was_taught_to_find(user_data, tmp_path):
    """A base trained on the atoms within 2 Å of the top (as the shipped ones) is fine-tuned on the same
    labels, not on every atom of the structure; an explicit label depth is kept."""
    from hydrafm.training.finetune import base_recipe

    torch.manual_seed(0)
    info = ModelInfo(config=TINY, pixel_size=25 / 128, provenance={"on_the_fly": {"label_depth": 2.0}})
    deep = save_checkpoint(tmp_path / "deep.pt", StructureUNet(TINY), info)
    assert base_recipe(CFG, info).label_depth == 2.0
    assert base_recipe(TrainConfig(label_depth=1.0), info).label_depth == 1.0
    assert base_recipe(CFG, ModelInfo(config=TINY)).label_depth is None  # a base without that recipe
    data = stack_atom_samples(_pairs(), 25 / 128, 0.1, 10)
    list(finetune(data, "kept-depth", deep, CFG, val_fraction=0.34))
    card = (user_data / "kept-depth.md").read_text()
    assert '"label_depth": 2.0' in card


def test_cli_train_from_a_model_keeps_its_label_depth(tmp_path, user_data):
    from hydrafm.cli import main
    from test_training import fake_dataset

    fake_dataset(tmp_path / "ds", n=8, shard=4)
    torch.manual_seed(0)
    info = ModelInfo(config=TINY, pixel_size=0.2, provenance={"on_the_fly": {"label_depth": 2.0}})
    deep = save_checkpoint(tmp_path / "deep.pt", StructureUNet(TINY), info)
    common = ["train", str(tmp_path / "ds"), "--epochs", "1", "--batch-size", "4", "--crop", "0",
              "--device", "cpu", "--val-runs", "shard", "--base-channels", "4"]
    assert main(common + ["-o", str(tmp_path / "a.pt"), "--init-from", str(deep)]) == 0
    assert load_checkpoint(tmp_path / "a.pt")[1].provenance["train_config"]["label_depth"] == 2.0
    assert main(common + ["-o", str(tmp_path / "b.pt"), "--init-from", str(deep), "--label-depth", "1.5"]) == 0
    assert load_checkpoint(tmp_path / "b.pt")[1].provenance["train_config"]["label_depth"] == 1.5
    assert main(common + ["-o", str(tmp_path / "c.pt")]) == 0  # from scratch: every atom, as before
    assert load_checkpoint(tmp_path / "c.pt")[1].provenance["train_config"]["label_depth"] is None


def test_cli_train_on_a_dataset_refuses_a_new_head_on_a_checkpoint(tmp_path, user_data, capsys):
    from hydrafm.cli import main
    from test_training import fake_dataset

    fake_dataset(tmp_path / "ds", n=8, shard=4)
    maps = save_checkpoint(tmp_path / "maps.pt", StructureUNet(TINY), ModelInfo(config=TINY, pixel_size=0.2))
    out = tmp_path / "cells.pt"
    assert main(["train", str(tmp_path / "ds"), "--epochs", "1", "--device", "cpu", "--val-runs", "shard",
                 "-o", str(out), "--init-from", str(maps), "--head", "cells"]) == 2
    err = capsys.readouterr().err
    assert "--head cells" in err and "maps.pt" in err and "--on-the-fly" in err and not out.exists()
