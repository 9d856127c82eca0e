"""Argument checks shared by the operators: each error names the argument and the rule."""

import torch

from effconv_ref.matrix import BOUNDARIES


def check_kernel_size(kernel_size) -> int:
    """``kernel_size`` must be a positive odd int (a stencil with a centre tap)."""
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int):
        raise TypeError(f"kernel_size must be an int; got {type(kernel_size).__name__}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(
            f"kernel_size={kernel_size}: only odd kernel sizes are supported "
            "(the stencil needs a centre tap so the output has the input's size)"
        )
    return kernel_size


def check_channels(channels) -> int:
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive int; got {channels!r}")
    return channels


def check_boundary(boundary: str) -> str:
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary={boundary!r} is not a boundary; choose one of {', '.join(BOUNDARIES)}")
    return boundary


def check_input(x, channels: int, name: str = "input", argument: str = "channels") -> None:
    """``x`` must be a 4-D ``(B, C, H, W)`` real floating tensor with ``C == channels``;
    ``argument`` names where ``channels`` came from (``channels``, ``in_channels``)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D (B, C, H, W); got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a real floating tensor; got {x.dtype}")
    if x.shape[1] != channels:
        raise ValueError(f"{name} has {x.shape[1]} channels but {argument}={channels} (shape {tuple(x.shape)})")


def check_kernel_fits(kernel_size: int, height: int, width: int) -> None:
    """A periodic/FFT path needs the stencil to fit in the image."""
    if kernel_size > height or kernel_size > width:
        raise ValueError(
            f"the kernel ({kernel_size}x{kernel_size}) is larger than the image ({height}x{width}); "
            "the FFT/periodic path needs kernel_size <= height and kernel_size <= width"
        )
