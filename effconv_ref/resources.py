"""Where the repository's committed data lives: the papers' numbers and stored results.

``data/`` sits beside the package in a checkout of the repository. In Colab, each chapter's
first cell clones the repository and sets ``EFFCONV_REPO`` to the clone.
"""

import os
from pathlib import Path

REPOSITORY = "https://github.com/effconv/effconv"


def data_dir() -> Path:
    """The repository's ``data/`` folder (from a checkout, or from ``$EFFCONV_REPO``)."""
    candidates = [Path(__file__).resolve().parent.parent]
    if os.environ.get("EFFCONV_REPO"):
        candidates.insert(0, Path(os.environ["EFFCONV_REPO"]))
    for root in candidates:
        if (root / "data" / "papers").is_dir():
            return root / "data"
    raise FileNotFoundError(
        "the repository's data/ folder was not found; run from a checkout of "
        f"{REPOSITORY} or set EFFCONV_REPO to one"
    )


def read_json(relative: str):
    """Parse ``data/<relative>`` as JSON."""
    import json

    return json.loads((data_dir() / relative).read_text())
