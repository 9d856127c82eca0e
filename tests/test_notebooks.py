"""The book's chapters are jupytext pairs (MyST .md + executed .ipynb) that never drift."""

import json
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")  # not on a bare GPU image; the book's checks need it

BOOK = Path(__file__).resolve().parent.parent / "book"
CHAPTERS = sorted(BOOK.glob("[0-9]*.md"))
NOTEBOOKS = sorted(BOOK.glob("[0-9]*.ipynb"))


def cells(notebook):
    return [(c.cell_type, c.source.strip()) for c in notebook.cells]


def test_there_are_chapters():
    assert len(CHAPTERS) >= 2


def test_every_notebook_has_its_pair():
    assert [p.stem for p in CHAPTERS] == [p.stem for p in NOTEBOOKS]


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_pair_cells_are_identical(md):
    paired = jupytext.read(md)
    stored = jupytext.read(md.with_suffix(".ipynb"))
    assert paired.metadata["jupytext"]["formats"] == "ipynb,md:myst"
    assert cells(paired) == cells(stored), f"{md.name} and its .ipynb differ: run `make notebooks`"


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_code_cell_was_executed_in_order(ipynb):
    notebook = json.loads(ipynb.read_text())
    counts = [c.get("execution_count") for c in notebook["cells"] if c["cell_type"] == "code"]
    assert counts, f"{ipynb.name} has no code cell"
    assert None not in counts, f"{ipynb.name} has code cells that were never executed"
    assert counts == list(range(1, len(counts) + 1)), f"{ipynb.name} was not run top to bottom once"


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_code_cell_installs_in_colab_only(ipynb):
    notebook = jupytext.read(ipynb)
    first = next(c for c in notebook.cells if c.cell_type == "code")
    assert "google.colab" in first.source and "pip" in first.source
    assert first.outputs == [], "the Colab set-up cell must print nothing outside Colab"


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_outputs_are_clean(ipynb):
    """No progress bars, widgets, warnings or errors in what the book shows."""
    notebook = json.loads(ipynb.read_text())
    for cell in notebook["cells"]:
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", f"{ipynb.name} stores an error"
            assert out.get("name") != "stderr", f"{ipynb.name} stores stderr: {''.join(out['text'])[:200]}"
            text = "".join(out.get("text", ""))
            assert "it/s]" not in text and "s/it]" not in text, f"{ipynb.name} stores a progress bar"
            assert "application/vnd.jupyter.widget-view+json" not in out.get("data", {})
