"""The book's pages as the tests see them: the pages _toc.yml lists, and the HTML that
`jupyter-book build` makes of them (built once per test session, see conftest.py)."""

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def toc_files():
    """Every page in _toc.yml, in order: the root, then each part's chapters."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part["chapters"]]
    return files


def build_book(out: Path) -> Path:
    """Build the book into ``out`` with warnings as errors; the folder of its HTML."""
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    result = subprocess.run(
        [str(jupyter_book), "build", str(ROOT), "--path-output", str(out), "--warningiserror"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return out / "_build" / "html"
