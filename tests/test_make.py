"""`make notebooks` and `make colab` pass the scale and the offline switch to what they run."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def fake_venv(tmp_path):
    """A virtual environment that make takes as installed, whose jupytext reports what it got."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("python", "jupytext"):
        tool = bin_dir / name
        tool.write_text('#!/bin/sh\necho "$0 scale=$EFFCONV_SCALE offline=$EFFCONV_OFFLINE $*"\n')
        tool.chmod(0o755)
    (tmp_path / "venv" / ".installed").touch()
    os.utime(tmp_path / "venv" / ".installed", (2**31, 2**31))  # newer than requirements.txt
    return tmp_path / "venv"


def make(*args, env=None):
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("EFFCONV_", "MAKE"))}
    environment.update(env or {})
    result = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), *args],
        capture_output=True, text=True, env=environment,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_notebooks_pass_the_scale_and_the_offline_switch(tmp_path):
    venv = fake_venv(tmp_path)
    out = make("notebooks", f"VENV={venv}", "SCALE=tutorial", "EFFCONV_OFFLINE=1")
    runs = [line for line in out.splitlines() if "jupytext scale=" in line]
    assert len(runs) == len(list(ROOT.glob("book/[0-9]*.md"))) > 0
    assert all("scale=tutorial offline=1 --to ipynb --execute book/" in line for line in runs)
    # from the environment, as well as from make's command line
    out = make("notebooks", f"VENV={venv}", "SCALE=tutorial", env={"EFFCONV_OFFLINE": "1"})
    assert "scale=tutorial offline=1" in out
    # and off unless asked for
    out = make("notebooks", f"VENV={venv}")
    assert "scale=smoke offline=0" in out and "offline=1" not in out


def test_colab_runs_at_tutorial_scale_offline_unless_told():
    assert "PYTHON=python3 SCALE=tutorial EFFCONV_OFFLINE=1 .ci/colab" in make("-n", "colab")
    out = make("-n", "colab", "SCALE=smoke", "CHAPTERS=book/00_introduction.ipynb")
    assert "SCALE=smoke EFFCONV_OFFLINE=1 .ci/colab book/00_introduction.ipynb" in out
