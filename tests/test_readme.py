"""The README's example is code a newcomer will paste: it must run."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no Python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})
    assert "params 589,824" in capsys.readouterr().out


def test_readme_names_the_test_command():
    text = README.read_text()
    assert "make test" in text and "make book" in text
