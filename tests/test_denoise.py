"""The denoiser: identity when untrained, learns to take noise off, plugs into Predict and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hydrafm.cli import main
from hydrafm.models.checkpoint import CheckpointError, ModelInfo, save_checkpoint
from hydrafm.models.denoise import Denoiser, DenoiserInfo, denoise_normalized, load_denoiser, save_denoiser
from hydrafm.models.preprocess import normalize_stack
from hydrafm.models.unet import StructureUNet, UNetConfig
from hydrafm.paths import pool_path
from hydrafm.predict.predictor import iter_predict_maps, predict_maps, resolve_denoiser
from hydrafm.progress import drive
from hydrafm.simulate.dataset import make_dataset
from hydrafm.simulate.settings import SimulationSettings
from hydrafm.stack import AFMStack
from hydrafm.structures.pool import StructurePool
from hydrafm.training.denoise import DenoiseConfig, experiment_noise, train_denoiser

SMALL = DenoiserInfo(base_channels=4, levels=2)


def _stack(rng, n=10, px=40):
    yy, xx = np.mgrid[0:px, 0:px]
    frames = [np.cos(xx / 2.0 + k * 0.1) * np.sin(yy / 3.0) * (1 + 0.1 * k) for k in range(n)]
    return (np.stack(frames) + 0.01 * rng.normal(size=(n, px, px))).astype(np.float32)


def test_an_untrained_denoiser_changes_nothing_and_keeps_any_size(tmp_path):
    x = normalize_stack(_stack(np.random.default_rng(0), px=37))  # not a multiple of 2**levels
    den = Denoiser(SMALL).eval()
    out = denoise_normalized(x, den)
    assert out.shape == x.shape and np.allclose(out, x, atol=1e-5)
    path = save_denoiser(tmp_path / "d.pt", den)
    assert isinstance(load_denoiser(path), Denoiser)
    with pytest.raises(ValueError, match="heights"):
        denoise_normalized(x[:4], den)


def test_a_stack_the_denoiser_would_barely_change_is_left_alone():
    x = normalize_stack(_stack(np.random.default_rng(0), px=32))
    den = Denoiser(SMALL).eval()
    lo, hi = den.info.switch
    for bias, strength in ((0.5 * lo, 0.0), ((lo + hi) / 2, 0.5), (2 * hi, 1.0)):
        torch.nn.init.constant_(den.net.head.bias, bias)  # a change of RMS `bias` everywhere
        out, w = denoise_normalized(x, den, with_strength=True)
        assert w == pytest.approx(strength, abs=1e-4)
        assert np.allclose(out, normalize_stack(x + strength * bias), atol=1e-5)


def test_a_structure_model_file_is_not_a_denoiser(tmp_path):
    model = save_checkpoint(tmp_path / "m.pt", StructureUNet(UNetConfig(base_channels=4)),
                            ModelInfo(config=UNetConfig(base_channels=4)))
    with pytest.raises(CheckpointError, match="m.pt"):
        load_denoiser(model)


def test_experiment_noise_is_seeded_and_leaves_the_clean_share_alone():
    x = torch.from_numpy(np.stack([_stack(np.random.default_rng(i)) for i in range(8)]))
    a = experiment_noise(x, torch.Generator().manual_seed(1), clean_share=0.0)
    b = experiment_noise(x, torch.Generator().manual_seed(1), clean_share=0.0)
    assert torch.equal(a, b) and not torch.allclose(a, x)
    assert torch.equal(experiment_noise(x, torch.Generator().manual_seed(1), clean_share=1.0), x)


def test_training_takes_noise_off_stacks_it_never_saw(tmp_path):
    pool = StructurePool.load(pool_path("ice"))
    settings = SimulationSettings(n_pixels=32, closest_distance=(2.4, 3.0))
    drive(make_dataset(tmp_path / "ds", 12, "ice", pool.subset(range(0, 240, 20)), settings, seed=1,
                       shard_size=6), show=False)
    torch.manual_seed(0)
    cfg = DenoiseConfig(max_steps=60, batch_size=8, crop=32, report_every=30, val_size=4)
    records = []
    out = drive(train_denoiser([tmp_path / "ds"], tmp_path / "d.pt", cfg, DenoiserInfo(base_channels=8, levels=2)),
                show=False, on_record=records.append)
    assert out.is_file() and [r.step for r in records] == [30, 60]
    assert records[-1].val < 0.9 * records[-1].val_noisy  # the held-back stacks, noised once (untrained: ==)
    den = load_denoiser(out)
    assert den.info.provenance["steps"] == 60 and den.info.provenance["stacks"] == 12


def test_predict_uses_the_denoiser_when_asked_or_when_the_card_says_so(tmp_path):
    rng = np.random.default_rng(0)
    stack = AFMStack(_stack(rng, px=32), (0.2, 0.2), np.arange(10) * 0.1)
    cfg = UNetConfig(base_channels=4)
    torch.manual_seed(0)
    net, info = StructureUNet(cfg).eval(), ModelInfo(config=cfg, pixel_size=0.2)
    den = Denoiser(SMALL)
    torch.nn.init.normal_(den.net.head.weight, std=0.5)  # a denoiser that changes the stack
    plain = predict_maps(stack, (net, info))[0]
    assert np.allclose(predict_maps(stack, (net, info), denoise=False)[0], plain)
    with_den = predict_maps(stack, (net, info), denoise=den)[0]
    assert not np.allclose(with_den, plain)
    path = save_denoiser(tmp_path / "d.pt", den)
    info.provenance["denoise"] = str(path)  # the card recommends this denoiser
    stages = [p.stage for p in iter_predict_maps(stack, (net, info)) if hasattr(p, "stage")]
    assert "denoising" in stages
    assert np.allclose(predict_maps(stack, (net, info))[0], with_den, atol=1e-5)
    assert np.allclose(predict_maps(stack, (net, info), denoise=False)[0], plain)
    atoms = drive(iter_predict_maps(stack, (net, info)), show=False).atoms(0.05)
    assert atoms.info["denoised"] == 1.0  # recorded with the atoms (and so in the .xyz)
    assert "denoised" not in drive(iter_predict_maps(stack, (net, info), denoise=False), show=False).atoms(0.05).info
    assert resolve_denoiser(False, info) is None
    with pytest.raises(CheckpointError, match="nothing.pt"):
        resolve_denoiser(tmp_path / "nothing.pt", info)


def test_cli_train_denoiser_refuses_to_overwrite(tmp_path, capsys):
    (tmp_path / "d.pt").write_bytes(b"keep me")
    assert main(["train-denoiser", str(tmp_path), "-o", str(tmp_path / "d.pt"), "--max-steps", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "d.pt").read_bytes() == b"keep me"


def test_the_shipped_denoiser_leaves_the_clean_sample_alone_and_takes_on_a_noisy_one():
    from hydrafm._sample_data import sample_path
    from hydrafm.io import load_stack
    from hydrafm.models.denoise import shipped_denoiser_path
    from hydrafm.predict.evaluate import degrade_like_experiment

    stack = load_stack(sample_path())
    den = load_denoiser(shipped_denoiser_path())
    clean = normalize_stack(stack.data)
    out, w = denoise_normalized(clean, den, with_strength=True)
    assert w == 0.0 and np.allclose(out, clean, atol=1e-5)
    noisy = normalize_stack(degrade_like_experiment(stack.data, np.random.default_rng(0), stack.pixel_size[0]))
    out, w = denoise_normalized(noisy, den, with_strength=True)
    assert w == 1.0
    # closer to the clean stack than the noisy input was
    assert np.mean((out - clean) ** 2) < 0.6 * np.mean((noisy - clean) ** 2)
