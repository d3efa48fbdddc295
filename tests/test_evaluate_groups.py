"""Per-family and per-distance scores, and the worst-case picture, on a dataset made by the torch engine."""

from __future__ import annotations

import numpy as np

from hydrafm.models.checkpoint import ModelInfo, save_checkpoint
from hydrafm.models.unet import StructureUNet, UNetConfig
from hydrafm.paths import pool_path
from hydrafm.predict.evaluate import evaluate_groups
from hydrafm.predict.report import worst_cases_figure
from hydrafm.progress import drive
from hydrafm.simulate.dataset import AFMDataset, make_dataset
from hydrafm.simulate.settings import SimulationSettings
from hydrafm.structures.pool import StructurePool
from hydrafm.training.onthefly import default_split


def test_scores_by_family_and_distance_with_a_worst_case_grid(tmp_path):
    pool = StructurePool.load(pool_path("ice"))
    held = default_split("ice", pool)[1]
    sub = pool.subset(held.indices[::50])
    settings = SimulationSettings(n_pixels=32, closest_distance=(2.4, 3.4))
    drive(make_dataset(tmp_path / "ds", 4, "ice", sub, settings, seed=3, shard_size=2), show=False)
    ds = AFMDataset(tmp_path / "ds")
    draws = ds.draws()
    fams = set(draws["group"].tolist())
    assert fams <= {"bilayer-Pt111", "amorphous-8ring", "hydrate-in-network-Na", "hydrate-in-network-K"}
    assert np.all((draws["distance"] >= 2.4) & (draws["distance"] <= 3.4))
    model = save_checkpoint(tmp_path / "m.pt", StructureUNet(UNetConfig(base_channels=4)),
                            ModelInfo(config=UNetConfig(base_channels=4), pixel_size=0.2))
    res = drive(evaluate_groups(ds, model, threshold=0.3, n_worst=3), show=False)
    summ = res.summary()
    assert set(summ["by_family"]) == fams
    assert sum(s.stacks for s in res.by_distance.values()) == res.total.stacks == 4
    assert len(res.worst) == 3 and res.worst[0][1] <= res.worst[-1][1]
    png = worst_cases_figure(ds, res.worst, tmp_path / "worst.png")
    assert png.stat().st_size > 10_000


def test_experiment_like_degradation_is_seeded_and_keeps_the_scale():
    from hydrafm.predict.evaluate import degrade_like_experiment

    rng = np.random.default_rng(0)
    stack = rng.normal(size=(10, 32, 32)).astype(np.float32) * 5
    a = degrade_like_experiment(stack, np.random.default_rng([1, 2]), 0.2)
    b = degrade_like_experiment(stack, np.random.default_rng([1, 2]), 0.2)
    assert np.array_equal(a, b) and a.shape == stack.shape
    # noise of a few % of the range: the frames stay recognisable
    r = [np.corrcoef(stack[i].ravel(), a[i].ravel())[0, 1] for i in range(1)]
    assert r[0] > 0.9 and not np.allclose(a, stack)


def test_the_robustness_protocol_part_by_part():
    """Each part of degrade_like_experiment alone, with the same random draws as the whole."""
    import pytest

    from hydrafm.predict.evaluate import DEGRADATION_PARTS, degrade_like_experiment

    yy, xx = np.mgrid[0:32, 0:32]
    stack = np.stack([np.sin(xx / 3.0 + k) * np.cos(yy / 4.0) for k in range(4)]).astype(np.float32)

    def run(**kw):
        return degrade_like_experiment(stack, np.random.default_rng([5, 2026]), 0.2, **kw)

    whole = run()
    assert np.array_equal(run(parts=DEGRADATION_PARTS), whole)
    assert np.array_equal(run(parts=()), stack)  # nothing applied: the stack as it was
    noise = [run(parts=(p,)) - stack for p in ("white", "pink", "plane", "jump")]
    assert all(np.abs(n).max() > 0 for n in noise)
    # without drift the noise parts add up to the whole protocol's noise
    no_drift = run(parts=("white", "pink", "plane", "jump"))
    assert np.allclose(no_drift - stack, sum(noise), atol=1e-5)
    with pytest.raises(ValueError, match="unknown degradation parts"):
        run(parts=("blur",))


def test_a_threshold_is_calibrated_on_the_first_halves_of_several_sets(tmp_path):
    import pytest

    from hydrafm.predict.evaluate import best_threshold, calibrate_threshold, evaluate_thresholds

    pool = StructurePool.load(pool_path("ice"))
    sub = pool.subset(default_split("ice", pool)[1].indices[::50])
    settings = SimulationSettings(n_pixels=32, closest_distance=(2.4, 3.4))
    sets = []
    for seed in (3, 4):
        drive(make_dataset(tmp_path / f"ds{seed}", 4, "ice", sub, settings, seed=seed, shard_size=2), show=False)
        sets.append(AFMDataset(tmp_path / f"ds{seed}"))
    model = save_checkpoint(tmp_path / "m.pt", StructureUNet(UNetConfig(base_channels=4)),
                            ModelInfo(config=UNetConfig(base_channels=4), pixel_size=0.2))
    ths = (0.2, 0.3, 0.5)
    t, totals = drive(calibrate_threshold(sets, model, ("O", "H"), ths, top=1.5), show=False)
    by_hand = [drive(evaluate_thresholds(ds, model, np.arange(2), ths, top=1.5), show=False) for ds in sets]
    for th in ths:  # the first two stacks of each set, summed
        assert totals[th].stacks == 4
        assert totals[th].summary() == by_hand[0][th].add(by_hand[1][th]).summary()
    assert t == best_threshold(totals, ("O", "H"))
    with pytest.raises(ValueError, match="at least one dataset"):
        drive(calibrate_threshold([], model), show=False)
