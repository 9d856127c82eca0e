"""effconv_ref: the cheap convolutions of the effconv book, each as a readable reference
in plain PyTorch and, where the paper promises speed, a fast GPU path."""

from effconv_ref.runtime import SCALES, device, scale, seed_everything

__version__ = "0.1.0"

__all__ = ["SCALES", "device", "scale", "seed_everything", "__version__"]
