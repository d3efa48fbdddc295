"""``hydrafm info``: shape, extent and heights for every public test file (values from the MANIFEST)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hydrafm.cli import main

# (path relative to testdata, extra args, shape, extent Å, n heights or None, first/last height)
EXPECTED = [
    ("nanonis_stack_borazine_Cu111", [], [31, 48, 48], [9.999931, 9.999931], 31, (0.0, 1.5)),
    ("SpmImages_01514_Au111_ncAFM.sxm", [], [1, 160, 160], [50.0, 50.0], 1, (0.0, 0.0)),
    ("SpmImages_01516_Au111_ncAFM.sxm", [], [1, 160, 160], [50.0, 50.0], 1, (0.0, 0.0)),
    ("pynxtools_A151216.123306-02602_ncAFM.sxm", [], [1, 128, 128], [20.0, 20.0], 1, (0.0, 0.0)),
    ("SpmGrids_Grid_Spectroscopy006_Zsweep_df.3ds", [], [134, 32, 32], [30.0, 30.0], 134, (0.0, 5.215686)),
    ("ProbeFlow_createc_afm.dat", [], [1, 256, 256], [150.0046, 150.0046], None, None),
    ("py_createc_A200621.161352.dat", [], [1, 256, 256], [215.2566, 215.2566], None, None),
    ("py_createc_A200622.082616_rot45.dat", [], [1, 512, 512], [430.5131, 430.5131], None, None),
    ("jiang_lab_water_Au111/L1_20_L2_1Ying_Jiang_1.npz", [], [12, 256, 256], [32.0, 32.0], None, None),
    ("jiang_lab_water_Au111/H2O_Au111-20210107-067.sxm.png", ["--scan-size", "3nm"], [1, 192, 192], [30.0, 30.0], None, None),
]


@pytest.mark.parametrize("rel, extra, shape, extent, n_heights, first_last", EXPECTED, ids=[e[0] for e in EXPECTED])
def test_info_on_every_public_file(testdata, capsys, rel, extra, shape, extent, n_heights, first_last):
    assert main(["info", str(testdata / rel), *extra]) == 0
    out = json.loads(capsys.readouterr().out.strip())
    assert set(out) == {"shape", "pixel_size_angstrom", "extent_angstrom", "heights_angstrom", "channel",
                        "units", "scan_angle_deg", "source"}
    assert out["shape"] == shape
    assert out["extent_angstrom"] == pytest.approx(extent, abs=1e-4)
    assert out["pixel_size_angstrom"] == pytest.approx([extent[0] / shape[1], extent[1] / shape[2]], abs=1e-5)
    if n_heights is None:
        assert out["heights_angstrom"] is None
    else:
        assert len(out["heights_angstrom"]) == n_heights
        assert out["heights_angstrom"][0] == pytest.approx(first_last[0], abs=1e-5)
        assert out["heights_angstrom"][-1] == pytest.approx(first_last[1], abs=1e-5)


def test_info_several_paths_one_line_each(testdata, capsys):
    assert main(["info", str(testdata / "SpmImages_01514_Au111_ncAFM.sxm"), "--sample"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    sample = json.loads(lines[1])
    assert sample["shape"] == [10, 128, 128] and sample["units"] == "Hz"
    assert sample["heights_angstrom"] == pytest.approx([0.1 * i for i in range(10)])


def test_info_angle_and_channel_fields(testdata, capsys):
    main(["info", str(testdata / "nanonis_stack_borazine_Cu111")])
    out = json.loads(capsys.readouterr().out)
    assert out["scan_angle_deg"] == -41.0 and out["channel"] == "Frequency_Shift" and out["units"] == "Hz"
    assert len(out["source"]) == 31


def test_bad_input_exit_code_2_one_line(tmp_path, capsys):
    bad = tmp_path / "broken.sxm"
    bad.write_bytes(b":NANONIS_VERSION:\n2\n")
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hydrafm: error:") and "broken.sxm" in err and "\n" not in err
    assert main(["info", str(tmp_path / "nope.sxm")]) == 2
    assert main(["info", str(bad), "--channel", "Current"]) == 2


def test_console_script_runs(testdata):
    r = subprocess.run([sys.executable, "-m", "hydrafm.cli", "info", str(testdata / "gwyfile_test.gwy")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "gwyfile_test.gwy" in r.stderr and r.stdout == ""


def test_reader_warnings_are_one_line_on_stderr(testdata, capsys):
    assert main(["info", str(testdata / "SpmGrids_Grid_Spectroscopy006_Zsweep_df.3ds")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [line for line in err if line.startswith("hydrafm: warning:")]
    assert any("sweep samples" in line and "Zsweep_df.3ds" in line for line in err)


def test_train_on_the_fly_refuses_negative_noise(tmp_path, capsys):
    assert main(["train", "--on-the-fly", "-o", str(tmp_path / "m.pt"), "--noise", "-0.1", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--noise" in err[0]
    assert not (tmp_path / "m.pt").exists()


@pytest.fixture
def otf_config(monkeypatch):
    """The OnTheFlyConfig `hydrafm train --on-the-fly` builds (``seen["cfg"]``), without training."""
    import hydrafm.training.onthefly as otf

    seen = {}

    def fake(out, cfg, *args, **kwargs):
        seen["cfg"] = cfg
        return out
        yield  # a generator, as the real one

    monkeypatch.setattr(otf, "train_on_the_fly", fake)
    return seen


def test_train_on_the_fly_pool_weights(tmp_path, capsys, otf_config):
    seen = otf_config
    out = str(tmp_path / "m.pt")
    assert main(["train", "--on-the-fly", "-o", out, "--pools", "hydrates,ice", "--pool-weights", "3,1"]) == 0
    assert seen["cfg"].pools == ("hydrates", "ice") and seen["cfg"].pool_weights == (3.0, 1.0)
    for bad in ("1", "1,x", "1,-1", "0,0"):
        assert main(["train", "--on-the-fly", "-o", out, "--pools", "hydrates,ice", "--pool-weights", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "--pool-weights" in err[-1]


def test_a_time_budget_is_not_cut_short_by_the_default_epochs_or_patience(tmp_path, capsys, otf_config):
    seen = otf_config
    out = str(tmp_path / "m.pt")
    assert main(["train", "--on-the-fly", "-o", out]) == 0
    assert (seen["cfg"].epochs, seen["cfg"].patience) == (30, 6)
    for budget in (["--minutes", "120"], ["--cpu-minutes", "120"]):
        assert main(["train", "--on-the-fly", "-o", out, *budget]) == 0
        assert seen["cfg"].epochs >= 10_000 and seen["cfg"].patience >= 10_000
    assert main(["train", "--on-the-fly", "-o", out, "--minutes", "120", "--epochs", "5", "--patience", "2"]) == 0
    assert (seen["cfg"].epochs, seen["cfg"].patience) == (5, 2)
    assert main(["train", "--on-the-fly", "-o", out, "--epochs", "0"]) == 2
    assert "--epochs" in capsys.readouterr().err


def test_train_on_a_dataset_refuses_a_time_budget(tmp_path, capsys):
    assert main(["train", str(tmp_path), "-o", str(tmp_path / "m.pt"), "--minutes", "5"]) == 2
    err = capsys.readouterr().err
    assert "--on-the-fly" in err and not (tmp_path / "m.pt").exists()
