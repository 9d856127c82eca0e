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
    """``x`` must be a 4-D ``(B, C, H, W)`` real floating tensor with ``C == channels`` and
    ``H, W >= 1``; ``argument`` names where ``channels`` came from (``channels``,
    ``in_channels``). ``B = 0`` is allowed: every operator returns an empty batch."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D (B, C, H, W); got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a real floating tensor; got {x.dtype}")
    if x.shape[1] != channels:
        raise ValueError(f"{name} has {x.shape[1]} channels but {argument}={channels} (shape {tuple(x.shape)})")
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"{name} must have height >= 1 and width >= 1; got shape {tuple(x.shape)}")


def under_autocast(x: torch.Tensor) -> bool:
    """Whether ``torch.autocast`` is on for ``x``'s device (never for a device autocast does not
    know, such as ``meta``, which the cost counting uses)."""
    device = x.device.type
    return torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)


def autocast_operands(x: torch.Tensor, *tensors):
    """``x`` and ``tensors`` (``None`` kept as it is) cast to autocast's dtype when autocast is on
    for ``x``'s device, as autocast does for ``nn.Conv2d``; unchanged otherwise. For the kernels,
    which take one dtype."""
    if not under_autocast(x):
        return (x, *tensors)
    dtype = torch.get_autocast_dtype(x.device.type)
    return tuple(None if t is None else t.to(dtype) for t in (x, *tensors))


def check_one_dtype(x: torch.Tensor, *tensors) -> None:
    """A kernel's input and parameters (``None`` skipped) must share one dtype."""
    params = [t for t in tensors if t is not None]
    if any(p.dtype != x.dtype for p in params):
        raise TypeError(
            f"the input ({x.dtype}) and the parameters ({', '.join(str(p.dtype) for p in params)}) "
            "must have one dtype"
        )


def check_dtype(x: torch.Tensor, *parameters: torch.Tensor, name: str = "input") -> None:
    """Outside ``torch.autocast`` the input and the parameters must have one dtype.

    Under autocast they may differ: autocast chooses the dtype each operation computes in.
    """
    if under_autocast(x):
        return
    for p in parameters:
        if p.dtype != x.dtype:
            raise TypeError(
                f"{name} is {x.dtype} but the parameters are {p.dtype}; they must have one dtype: "
                f"convert the module (module.to({x.dtype})) or the input, or run under torch.autocast"
            )


def check_kernel_fits(kernel_size: int, height: int, width: int) -> None:
    """A periodic/FFT path needs the stencil to fit in the image."""
    if kernel_size > height or kernel_size > width:
        raise ValueError(
            f"the kernel ({kernel_size}x{kernel_size}) is larger than the image ({height}x{width}); "
            "the FFT/periodic path needs kernel_size <= height and kernel_size <= width"
        )


def refuse_torchscript(module) -> None:
    """``__prepare_scriptable__`` of every operator and step: ``torch.jit.script`` cannot compile
    them (custom autograd Functions, Python-side argument checks), so say so plainly."""
    raise TypeError(
        f"{type(module).__name__} does not support TorchScript (torch.jit.script); "
        "use torch.compile, or torch.jit.trace for a fixed input shape"
    )
