"""Which scale a chapter runs at and on which device: one answer for every chapter.

``EFFCONV_SCALE`` is ``smoke`` (CPU, seconds), ``tutorial`` (a GPU, minutes) or ``paper``
(the paper's recipe, hours). Unset, it is ``tutorial`` when a GPU is present, else ``smoke``.

``EFFCONV_OFFLINE=1`` replaces every downloaded dataset by synthetic images of the same shape,
classes and length (``effconv_ref.data``), so that a chapter runs at any scale without a network.
"""

import os
import random

import numpy as np
import torch

SCALES = ("smoke", "tutorial", "paper")


def scale() -> str:
    """The scale named by ``EFFCONV_SCALE``, or the default for this machine."""
    value = os.environ.get("EFFCONV_SCALE", "").strip().lower()
    if not value:
        return "tutorial" if torch.cuda.is_available() else "smoke"
    if value not in SCALES:
        raise ValueError(
            f"EFFCONV_SCALE={value!r} is not a scale; choose one of {', '.join(SCALES)}"
        )
    return value


OFFLINE_TRUE = ("1", "true", "yes", "on")
OFFLINE_FALSE = ("", "0", "false", "no", "off")


def offline() -> bool:
    """Whether ``EFFCONV_OFFLINE`` asks for synthetic data instead of downloads (unset: no)."""
    value = os.environ.get("EFFCONV_OFFLINE", "").strip().lower()
    if value in OFFLINE_TRUE:
        return True
    if value in OFFLINE_FALSE:
        return False
    raise ValueError(
        f"EFFCONV_OFFLINE={value!r} is not a switch; set it to 1 (synthetic data, no downloads) "
        "or 0 (download the real datasets)"
    )


def device() -> torch.device:
    """``cuda`` when a GPU is present, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def progress_bar(*args, **kwargs):
    """A tqdm progress bar: a widget in Jupyter when ipywidgets is installed, text otherwise.

    Without ipywidgets, ``tqdm.auto`` warns once on import and falls back to text; the
    warning would end up in a notebook's stored outputs, so it is silenced here.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm
    return tqdm(*args, **kwargs)
