"""The prepared GPU run (benchmarks/device_checks.sh) kept runnable: it is executed only when a task is lent a
GPU, so here it runs on the CPU at toy sizes (DEVICE=cpu SMALL=1) and its lockstep device field is parsed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = [ROOT / "benchmarks" / "device_checks.sh", ROOT / "benchmarks" / "device_wheels.sh"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script):
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_lockstep_device_field():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_speaker_scale as bench
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert bench.parse_lockstep("default:cuda") == {"device": "cuda"}
    assert bench.parse_lockstep("em2:cuda-1") == {"em_steps": 2, "device": "cuda:1"}
    with pytest.raises(SystemExit, match="bad --lockstep field"):
        bench.parse_lockstep("default:gpu")


def test_speaker_part_runs_on_cpu_at_toy_size(tmp_path):
    env = {
        **os.environ,
        "DEVICE": "cpu",
        "SMALL": "1",
        "PYTHON": sys.executable,
        "WHEELS": str(tmp_path / "no-wheels"),
        "OUT": str(tmp_path / "out"),
    }
    done = subprocess.run(
        ["bash", str(SCRIPTS[0]), "speaker"], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    log = (tmp_path / "out" / "speaker.txt").read_text()
    for line in ("(a) cosine sweep", "(b) plda sweep", "|dAUC| vs exact", "(e) PCA floor"):
        assert line in log, log
    assert (tmp_path / "out" / "machine.txt").read_text().strip()
    unknown = subprocess.run(["bash", str(SCRIPTS[0]), "nope"], capture_output=True, text=True, env=env)
    assert unknown.returncode == 2 and "unknown part" in unknown.stderr
