"""The book builds without a single warning, and its Colab buttons open the .ipynb files."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")  # PyYAML: the book build needs it; a bare GPU image may not have it

ROOT = Path(__file__).resolve().parent.parent


def toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part["chapters"]]
    return files


@pytest.fixture(scope="module")
def html(tmp_path_factory):
    out = tmp_path_factory.mktemp("book")
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    result = subprocess.run(
        [str(jupyter_book), "build", str(ROOT), "--path-output", str(out), "--warningiserror"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return out / "_build" / "html"


def test_every_toc_page_renders(html):
    for name in toc_files():
        assert (html / f"{name}.html").exists(), f"{name} did not render"


def test_colab_buttons_open_notebooks(html):
    notebooks = [n for n in toc_files() if (ROOT / f"{n}.ipynb").exists()]
    assert notebooks
    for name in notebooks:
        page = (html / f"{name}.html").read_text()
        links = re.findall(r'href="(https://colab\.research\.google\.com/[^"]+)"', page)
        assert links, f"{name} has no Colab button"
        for link in links:
            assert link.endswith(f"/blob/main/{name}.ipynb"), link


def test_math_and_citations_render(html):
    page = (html / "book/01_convolution_as_a_matrix.html").read_text()
    assert "math notranslate" in page
    assert "treister2018lowcost" in page or "Treister" in page
