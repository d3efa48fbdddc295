"""Corrupted input never escapes as anything but an AFMFileError (byte mutations of real files)."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hydrafm import load_stack
from hydrafm.io import AFMFileError

FILES = [
    "pynxtools_A151216.123306-02602_ncAFM.sxm",
    "SpmGrids_Grid_Spectroscopy006_Zsweep_df.3ds",
    "ProbeFlow_createc_afm.dat",
    "py_createc_A200621.161352.dat",
    "gwyfile_test.gwy",
    "jiang_lab_water_Au111/L1_20_L2_1Ying_Jiang_1.npz",
    "jiang_lab_water_Au111/H2O_Au111-20210107-059.sxm.png",
]


def _try(path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            load_stack(path, scan_size=20.0)
        except AFMFileError:
            pass


@pytest.mark.parametrize("name", FILES)
def test_truncations_and_header_damage(testdata, tmp_path, name):
    raw = (testdata / name).read_bytes()
    target = tmp_path / ("x" + (testdata / name).suffix)
    cuts = [0, 1, 10, 100, 1000, 4000, len(raw) // 3, len(raw) // 2, len(raw) - 7, len(raw) - 1]
    for cut in cuts:
        target.write_bytes(raw[:cut])
        _try(target)
    rng = np.random.default_rng(0)
    for _ in range(15):  # damage the header region
        b = bytearray(raw)
        for pos in rng.integers(0, min(len(raw), 20000), size=8):
            b[pos] = int(rng.integers(0, 256))
        target.write_bytes(bytes(b))
        _try(target)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_byte_mutations(testdata, tmp_path, data):
    name = data.draw(st.sampled_from(FILES))
    raw = bytearray((testdata / name).read_bytes())
    n = data.draw(st.integers(1, 12))
    for _ in range(n):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    target = tmp_path / ("m" + (testdata / name).suffix)
    target.write_bytes(bytes(raw))
    _try(target)


def test_damaged_member_of_a_stack_folder(testdata, tmp_path):
    folder = tmp_path / "stack"
    shutil.copytree(testdata / "nanonis_stack_borazine_Cu111", folder)
    victim = sorted(folder.iterdir())[5]
    victim.write_bytes(victim.read_bytes()[:5000])
    with pytest.raises(AFMFileError, match=victim.name):
        load_stack(folder)
