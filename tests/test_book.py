"""The book builds without a single warning, and its Colab buttons open the .ipynb files."""

import re

import pytest

yaml = pytest.importorskip("yaml")  # PyYAML: the book build needs it; a bare GPU image may not have it

from book_pages import ROOT, toc_files  # noqa: E402  (needs yaml)


@pytest.fixture(scope="module")
def html(built_book):
    return built_book


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
