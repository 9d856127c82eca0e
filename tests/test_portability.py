"""What a chapter stores and asserts must hold on any CPU, not only on the one that ran it.

Values that come out of an FFT, a BLAS call or an eigen-solver differ in their last bits between
instruction sets. So a chapter never uses such a value as a dictionary key (``growth[h / h_max]``
found ``1.5000000000000002`` on one CPU and ``1.5`` on another), and the outputs nbval compares
print only the digits that are stable.
"""

import ast
import json
import re
from pathlib import Path

import pytest

BOOK = Path(__file__).resolve().parent.parent / "book"
CHAPTERS = sorted(BOOK.glob("[0-9]*.md"))
NOTEBOOKS = sorted(BOOK.glob("[0-9]*.ipynb"))

CODE_CELL = re.compile(r"^```\{code-cell\}[^\n]*\n(.*?)^```", re.S | re.M)


def code_cells(md: Path):
    """The source of every code cell of a MyST chapter, options and magics dropped."""
    for block in CODE_CELL.findall(md.read_text()):
        lines = block.splitlines()
        if lines and lines[0].strip() == "---":  # a cell's options as a YAML block
            lines = lines[lines.index("---", 1) + 1:]
        while lines and lines[0].startswith(":"):  # ... or as ":key: value" lines
            lines = lines[1:]
        yield "\n".join(line for line in lines if not line.lstrip().startswith(("%", "!")))


def computed_keys(source: str):
    """Subscripts that store under a key computed by arithmetic or read off a tensor:
    ``d[a / b] = ...`` or ``d[x.item()] = ...``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store):
            for part in ast.walk(node.slice):
                division = isinstance(part, ast.BinOp) and isinstance(part.op, (ast.Div, ast.Pow))
                item = isinstance(part, ast.Call) and getattr(part.func, "attr", "") in ("item", "tolist")
                if division or item:
                    found.append(ast.unparse(node))
    return found


def test_finds_a_float_key():
    """The check sees the pattern that broke chapter 2 on another CPU."""
    assert computed_keys("growth = {}\nfor h in hs:\n    growth[h / h_max] = 1") == ["growth[h / h_max]"]
    assert computed_keys("d[x.max().item()] = 1") == ["d[x.max().item()]"]
    assert computed_keys("d[fraction] = 1\nd[i + 1] = 2") == []


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_no_computed_float_keys(md):
    keys = [key for source in code_cells(md) for key in computed_keys(source)]
    assert not keys, f"{md.name} keys a dict by a computed value (not portable across CPUs): {keys}"


# A number with more than 6 significant digits after the decimal point, in an output that nbval
# compares, is a number whose last digits may differ on another CPU.
LONG_FLOAT = re.compile(r"(?<![\w.])\d+\.\d{7,}")


def compared_outputs(ipynb: Path):
    notebook = json.loads(ipynb.read_text())
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "code" or "nbval-ignore-output" in cell.get("metadata", {}).get("tags", []):
            continue
        for out in cell.get("outputs", []):
            text = "".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", ""))
            yield index, text


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.stem)
def test_compared_outputs_print_only_stable_digits(ipynb):
    long = [(i, m) for i, text in compared_outputs(ipynb) for m in LONG_FLOAT.findall(text)]
    assert not long, f"{ipynb.name} stores floats with more digits than are stable: {long[:5]}"
