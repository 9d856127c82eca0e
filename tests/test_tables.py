import pytest

from effconv_ref.tables import markdown_table


def test_markdown_table():
    table = markdown_table(["name", "n"], [["a", "1,024"], ["b", "2"]])
    assert repr(table).splitlines() == [
        "| name | n |",
        "| :--- | ---: |",
        "| a | 1,024 |",
        "| b | 2 |",
    ]
    assert table._repr_markdown_() == repr(table) == str(table)
    right_left = markdown_table(["x", "y"], [], align="rl")
    assert repr(right_left).splitlines()[1] == "| ---: | :--- |"


def test_markdown_table_rejects_ragged_rows_and_bad_align():
    with pytest.raises(ValueError, match="len\\(header\\) = 2"):
        markdown_table(["a", "b"], [["1"]])
    with pytest.raises(ValueError, match="align"):
        markdown_table(["a", "b"], [["1", "2"]], align="lc")
