"""The shell glue of the GPU scripts, with a stand-in ``python`` (no training): what comes back in OUT.

On the first lent H200 of session 48 no checkpoint came back: the every-20-s copy in
``scripts/gpu_onthefly.sh`` died at its first tick (no checkpoint yet, under ``set -e``) and the exit
trap's ``kill`` of that dead loop ended the script before its own copy.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or sys.platform == "win32",
                                reason="the GPU scripts are bash scripts")

#: stands in for python: `python - <<PY` prints a device line; `python -m hydrafm.cli train ... -o PATH`
#: writes PATH after WRITE_AFTER s, then trains on for TRAIN_FOR s (a checkpoint that appears mid-run)
FAKE_PYTHON = """#!/usr/bin/env bash
if [ "$1" = "-" ]; then cat > /dev/null; echo '{"torch": "fake"}'; exit 0; fi
out=""; prev=""
for a in "$@"; do [ "$prev" = "-o" ] && out="$a"; prev="$a"; done
sleep "${WRITE_AFTER:-1}"; echo checkpoint > "$out"; echo '{"epoch": 1}'
sleep "${TRAIN_FOR:-2}"; echo "{\\"model\\": \\"$out\\"}"
"""


def _env(tmp_path: Path, **extra: str) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", BENCH="0", **extra)


def test_the_checkpoint_comes_back_though_the_copy_loop_ticked_before_it_existed(tmp_path):
    out = tmp_path / "out"
    env = _env(tmp_path, KEEP_EVERY="0.2", WRITE_AFTER="1", TRAIN_FOR="1")
    res = subprocess.run(["bash", str(ROOT / "scripts/gpu_onthefly.sh"), str(out), "0.1"], env=env, check=False,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert (out / "water-otf.pt").read_text() == "checkpoint\n"
    assert sorted(p.name for p in out.iterdir()) == ["device.json", "train.jsonl", "water-otf.pt"]


def test_a_run_killed_hard_still_leaves_its_checkpoint_in_out(tmp_path):
    out = tmp_path / "out"
    env = _env(tmp_path, KEEP_EVERY="0.2", WRITE_AFTER="0.5", TRAIN_FOR="60")
    proc = subprocess.Popen(["bash", str(ROOT / "scripts/gpu_onthefly.sh"), str(out), "0.1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 30
        while not (out / "water-otf.pt").exists() and time.time() < deadline:
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # as the device tool's time limit does: no trap runs
        proc.wait(timeout=30)
    assert (out / "water-otf.pt").read_text() == "checkpoint\n"
