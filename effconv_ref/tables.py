"""Tables the chapters show: rows of numbers as a Markdown table, which a notebook
renders as a table and whose plain text (what nbval compares) is the same Markdown."""


class MarkdownTable:
    """A table a notebook displays as Markdown; ``repr`` is its Markdown source."""

    def __init__(self, text: str):
        self.text = text

    def _repr_markdown_(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return self.text


def markdown_table(header: list[str], rows: list[list], align: str = "") -> MarkdownTable:
    """A GitHub-flavoured Markdown table. ``rows`` hold strings (format numbers before);
    ``align`` is one letter per column, ``l`` or ``r`` (default: the first column left,
    the others right)."""
    if not header or any(len(row) != len(header) for row in rows):
        raise ValueError(f"every row must have len(header) = {len(header)} cells")
    align = align or "l" + "r" * (len(header) - 1)
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align must be one of 'l', 'r' per column, got {align!r}")
    rule = [":---" if a == "l" else "---:" for a in align]
    lines = [header, rule, *rows]
    text = "\n".join("| " + " | ".join(str(x) for x in line) + " |" for line in lines)
    return MarkdownTable(text)
