"""What a layer costs: parameters, multiply-adds (MACs) and bytes moved.

Two ways to get the same numbers, so that each checks the other:

* **by formula** — :func:`conv2d_cost` and its two building blocks :func:`depthwise_cost`
  and :func:`pointwise_cost`, written from the textbook expressions;
* **by counting** — :func:`count_cost` runs a module once under PyTorch's
  :class:`~torch.utils.flop_counter.FlopCounterMode`, extended here with the FFTs it does
  not know about (:func:`fft_flops`); :func:`layer_macs` lists, layer by layer, the
  multiply-adds of the convolutions and fully connected layers, as papers count a network.

A MAC is one multiply and one add, so ``flops = 2 * macs``. *Bytes* is the least traffic
a single pass must have with memory: read the input once, read the weights once, write the
output once. ``flops / bytes`` is the arithmetic intensity that places a layer on the
roofline (Williams, Waterman & Patterson, "Roofline", CACM 2009): :func:`roofline_floor`
and :func:`bound`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "Cost",
    "conv2d_cost",
    "depthwise_cost",
    "pointwise_cost",
    "fft_flops",
    "count_params",
    "count_cost",
    "layer_macs",
    "roofline_floor",
    "bound",
]


def _si(value: float, unit: str = "") -> str:
    """``1234567 -> '1.23M'``: two decimals and a decimal (SI) prefix."""
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{prefix}{unit}"
    return f"{value:.0f}{unit}"


@dataclass(frozen=True)
class Cost:
    """Parameters, multiply-adds and bytes moved by one pass of a layer (or a sequence).

    Costs add, so the cost of a network is the sum of the costs of its layers:
    ``conv2d_cost(...) + conv2d_cost(...)`` or ``sum(costs)``.
    """

    params: int
    macs: int
    bytes: int

    @property
    def flops(self) -> int:
        """Floating-point operations: one multiply and one add per MAC."""
        return 2 * self.macs

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, flops per byte moved (the roofline's x-axis)."""
        if self.bytes == 0:
            return math.inf if self.flops else 0.0
        return self.flops / self.bytes

    def __add__(self, other: Cost) -> Cost:
        if not isinstance(other, Cost):
            return NotImplemented
        return Cost(self.params + other.params, self.macs + other.macs, self.bytes + other.bytes)

    def __radd__(self, other):
        # lets ``sum(costs)`` start from 0
        if isinstance(other, int) and other == 0:
            return self
        return NotImplemented

    def __str__(self) -> str:
        return (
            f"params {self.params:,}  MACs {_si(self.macs)}  bytes {_si(self.bytes, 'B')}"
            f"  intensity {self.intensity:.2f} flop/B"
        )


def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair


def conv2d_cost(
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, int],
    height: int,
    width: int,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | None = None,
    groups: int = 1,
    bias: bool = False,
    batch: int = 1,
    dtype_bytes: int = 4,
) -> Cost:
    """Cost of one ``torch.nn.Conv2d`` forward pass, by formula.

    With kernel ``kh x kw``, output ``Ho x Wo`` where ``Ho = floor((H + 2 p - kh) / s) + 1``,
    and ``C_in / groups`` input channels seen by each output channel:

    * params = ``C_out * (C_in / groups) * kh * kw`` (+ ``C_out`` with bias)
    * MACs   = ``batch * C_out * Ho * Wo * (C_in / groups) * kh * kw``
      (bias additions are adds, not multiply-adds, and are not counted — as in
      ``FlopCounterMode``)
    * bytes  = ``dtype_bytes * (batch * C_in * H * W + params + batch * C_out * Ho * Wo)``

    ``padding=None`` means "same" for odd kernels: ``k // 2`` on each side.
    """
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(stride, "stride")
    ph, pw = (kh // 2, kw // 2) if padding is None else _pair(padding, "padding")
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                        ("groups", groups), ("height", height), ("width", width),
                        ("batch", batch), ("dtype_bytes", dtype_bytes)):
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    if min(kh, kw, sh, sw) < 1 or min(ph, pw) < 0:
        raise ValueError(
            f"kernel_size and stride must be positive and padding non-negative, got "
            f"kernel_size={kernel_size!r}, stride={stride!r}, padding={padding!r}"
        )
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"in_channels ({in_channels}) and out_channels ({out_channels}) must both be "
            f"divisible by groups ({groups})"
        )
    out_h = (height + 2 * ph - kh) // sh + 1
    out_w = (width + 2 * pw - kw) // sw + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"kernel_size {(kh, kw)} is larger than the padded image "
            f"{(height + 2 * ph, width + 2 * pw)}"
        )
    fan_in = (in_channels // groups) * kh * kw
    params = out_channels * fan_in + (out_channels if bias else 0)
    macs = batch * out_channels * out_h * out_w * fan_in
    moved = batch * in_channels * height * width + params + batch * out_channels * out_h * out_w
    return Cost(params=params, macs=macs, bytes=dtype_bytes * moved)


def depthwise_cost(
    channels: int,
    kernel_size: int | tuple[int, int],
    height: int,
    width: int,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | None = None,
    bias: bool = False,
    batch: int = 1,
    dtype_bytes: int = 4,
) -> Cost:
    """Depth-wise convolution (``groups = channels``): each channel filtered on its own.

    MACs = ``batch * C * Ho * Wo * kh * kw``; see :func:`conv2d_cost`.
    """
    return conv2d_cost(channels, channels, kernel_size, height, width, stride=stride,
                       padding=padding, groups=channels, bias=bias, batch=batch,
                       dtype_bytes=dtype_bytes)


def pointwise_cost(
    in_channels: int,
    out_channels: int,
    height: int,
    width: int,
    *,
    stride: int | tuple[int, int] = 1,
    groups: int = 1,
    bias: bool = False,
    batch: int = 1,
    dtype_bytes: int = 4,
) -> Cost:
    """Point-wise (1x1) convolution: mixes channels, one pixel at a time.

    MACs = ``batch * C_out * Ho * Wo * C_in / groups``; see :func:`conv2d_cost`.
    """
    return conv2d_cost(in_channels, out_channels, 1, height, width, stride=stride, padding=0,
                       groups=groups, bias=bias, batch=batch, dtype_bytes=dtype_bytes)


def lean_cost(
    in_channels: int,
    out_channels: int,
    height: int,
    width: int,
    *,
    stride: int = 1,
    bias: bool = False,
    batch: int = 1,
    dtype_bytes: int = 4,
) -> Cost:
    """The lean convolution of Ephrath et al. (eqs. 3-4): a 1x1 convolution plus four
    off-centre taps on the first ``min(in, out)`` channels, zero padding 1.

    Parameters ``in * out + 4 * min(in, out)``; MACs ``batch * Ho * Wo * (in * out + 4 * min)``
    (the centre tap is the 1x1 weight ``alpha_ii``, counted once); bytes as one pass: input,
    weights and output once each.
    """
    out_h, out_w = (height - 1) // stride + 1, (width - 1) // stride + 1
    taps = 4 * min(in_channels, out_channels)
    params = in_channels * out_channels + taps + (out_channels if bias else 0)
    macs = batch * out_h * out_w * (in_channels * out_channels + taps)
    moved = batch * in_channels * height * width + params + batch * out_channels * out_h * out_w
    return Cost(params=params, macs=macs, bytes=dtype_bytes * moved)


def fft_flops(n_points: int | Sequence[int], n_transforms: int = 1, real: bool = False) -> float:
    """The standard *estimate* of an FFT's cost: ``5 N log2 N`` flops for a complex FFT of
    ``N`` points, ``2.5 N log2 N`` for a transform of real input (or to real output).

    This is the radix-2 Cooley-Tukey count that FFTW's benchmarks use to report "flops"; real
    libraries do somewhat fewer (split radix) or more (odd sizes) operations. ``n_points``
    may be a tuple of sizes for a multi-dimensional transform: ``N`` is their product, which
    is the same as summing the 1-D estimates over the axes. ``n_transforms`` independent
    transforms (a batch) cost that many times as much.
    """
    n = math.prod(n_points) if isinstance(n_points, (tuple, list, torch.Size)) else n_points
    if n < 1 or n_transforms < 0:
        raise ValueError(f"n_points must be positive and n_transforms non-negative, got "
                         f"n_points={n_points!r}, n_transforms={n_transforms!r}")
    per_transform = (2.5 if real else 5.0) * n * math.log2(n)
    return n_transforms * per_transform


def _fft_count(shape: Sequence[int], dims: Sequence[int], real: bool) -> int:
    """``fft_flops`` over ``dims`` of a tensor of ``shape``; the other dims are the batch."""
    sizes = [shape[d] for d in dims]
    n = math.prod(sizes)
    return round(fft_flops(sizes, n_transforms=math.prod(shape) // n, real=real))


def _fft_r2c_flop(x_shape, dim, normalization, onesided, *, out_shape=None, **kwargs) -> int:
    return _fft_count(x_shape, dim, real=True)  # N = the real input's sizes


def _fft_c2r_flop(x_shape, dim, normalization, last_dim_size, *, out_shape=None, **kwargs) -> int:
    return _fft_count(out_shape, dim, real=True)  # N = the real output's sizes


def _fft_c2c_flop(x_shape, dim, normalization, forward, *, out_shape=None, **kwargs) -> int:
    return _fft_count(x_shape, dim, real=False)


_FFT_FORMULAS = {
    torch.ops.aten._fft_r2c: _fft_r2c_flop,
    torch.ops.aten._fft_c2r: _fft_c2r_flop,
    torch.ops.aten._fft_c2c: _fft_c2c_flop,
}


def count_params(module: torch.nn.Module) -> int:
    """Number of trainable parameters (``requires_grad``), each shared tensor counted once."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _tensor_bytes(tree, dtype_bytes: int) -> int:
    """Bytes of every tensor in a (nested) structure, at ``dtype_bytes`` per real number."""
    return sum(
        t.numel() * dtype_bytes * (2 if t.is_complex() else 1)
        for t in tree_leaves(tree)
        if isinstance(t, torch.Tensor)
    )


def count_cost(module, *inputs, dtype_bytes: int = 4) -> Cost:
    """Cost of ``module(*inputs)``, by counting: runs the module once (forward only,
    without autograd) under ``FlopCounterMode``.

    * params = :func:`count_params` (0 if ``module`` is a plain function)
    * MACs   = counted flops / 2. ``FlopCounterMode`` counts matrix products and
      convolutions; the FFTs ``aten._fft_r2c``, ``aten._fft_c2r`` and ``aten._fft_c2c`` are
      added with the :func:`fft_flops` estimate over the transformed dims. Element-wise
      operations are not counted.
    * bytes  = ``dtype_bytes`` per number of the module's input tensors + all its parameters
      + its output tensors (a complex number is two). Intermediate tensors are not counted:
      this is the traffic of an ideal single pass, comparable with :func:`conv2d_cost`.
    """
    counter = FlopCounterMode(display=False, custom_mapping=_FFT_FORMULAS)
    with torch.no_grad(), counter:
        output = module(*inputs)
    flops = counter.get_total_flops()
    is_module = isinstance(module, torch.nn.Module)
    params = count_params(module) if is_module else 0
    param_bytes = _tensor_bytes(list(module.parameters()), dtype_bytes) if is_module else 0
    moved = _tensor_bytes(inputs, dtype_bytes) + param_bytes + _tensor_bytes(output, dtype_bytes)
    return Cost(params=params, macs=round(flops / 2), bytes=moved)


# layers that compute but are not counted, as papers count: normalisation (element-wise)
_NOT_COUNTED = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d,
                torch.nn.GroupNorm, torch.nn.LayerNorm)


def _fan_in(module: torch.nn.Module) -> int | None:
    """Multiply-adds per output number: ``in / groups * kh * kw`` for a convolution,
    ``in_features`` for a fully connected layer, ``∏ t * k²`` for a TpS convolution;
    ``None`` for a module that is not one of them."""
    from effconv_ref.sic import TpSConv2d

    if isinstance(module, torch.nn.Conv2d):
        return module.in_channels // module.groups * math.prod(module.kernel_size)
    if isinstance(module, torch.nn.Linear):
        return module.in_features
    if isinstance(module, TpSConv2d):
        return module.weight.shape[1] * module.kernel_size ** 2
    return None


def layer_macs(model: torch.nn.Module, input_size: Sequence[int]) -> list[dict]:
    """Multiply-adds of every convolution and fully connected layer of ``model`` on one
    input of ``input_size`` (``(C, H, W)``), as papers count a network: each output number
    costs its fan-in, ``macs = outputs x fan_in``. Normalisation, activations, pooling,
    residual additions and biases are not counted.

    One row per call of an ``nn.Conv2d`` (any groups, stride, padding), ``nn.Linear`` or
    :class:`~effconv_ref.sic.TpSConv2d`, in the order they run: ``name`` (the module's name
    in ``model``), ``type``, ``in_channels``, ``out_channels``, ``groups`` (``None`` where it
    does not apply), ``output_size`` (``(H, W)``, ``None`` for a linear layer), ``fan_in``,
    ``outputs`` (numbers per input) and ``macs``. Counted by forward hooks on one pass (no
    autograd, in eval mode, each module's training flag restored after), independently of
    :class:`~torch.utils.flop_counter.FlopCounterMode`; ``model`` may live on the ``meta``
    device. A module with parameters of its own that is none of these layers and no
    normalisation raises ``TypeError`` before any work: its cost would be missed.
    """
    names = {module: name for name, module in model.named_modules()}
    for module, name in names.items():
        own = next(module.parameters(recurse=False), None) is not None
        if own and _fan_in(module) is None and not isinstance(module, _NOT_COUNTED):
            raise TypeError(
                f"layer_macs counts nn.Conv2d, nn.Linear and TpSConv2d; {name or 'the model'} "
                f"({type(module).__name__}) holds parameters of its own and is none of them"
            )
    size = tuple(input_size)
    if len(size) != 3 or not all(isinstance(v, int) and v >= 1 for v in size):
        raise ValueError(f"input_size must be (C, H, W), three positive ints; got {input_size!r}")
    rows = []

    def record(module, inputs, output):
        fan_in, outputs = _fan_in(module), output[0].numel()
        linear = isinstance(module, torch.nn.Linear)
        rows.append({
            "name": names[module],
            "type": type(module).__name__,
            "in_channels": module.in_features if linear else module.in_channels,
            "out_channels": module.out_features if linear else module.out_channels,
            "groups": module.groups if isinstance(module, torch.nn.Conv2d) else None,
            "output_size": None if linear else tuple(output.shape[-2:]),
            "fan_in": fan_in,
            "outputs": outputs,
            "macs": outputs * fan_in,
        })

    hooks = [m.register_forward_hook(record) for m in names if _fan_in(m) is not None]
    parameter = next(model.parameters(), None)
    x = torch.zeros(1, *size, device=parameter.device if parameter is not None else None,
                    dtype=parameter.dtype if parameter is not None else None)
    modes = {module: module.training for module in names}
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for module, training in modes.items():
            module.training = training
        for hook in hooks:
            hook.remove()
    return rows


def roofline_floor(flops: float, bytes: float, peak_flops: float, bandwidth: float) -> float:
    """The roofline's lower bound on run time, in seconds:
    ``max(flops / peak_flops, bytes / bandwidth)``. No kernel can beat it."""
    if peak_flops <= 0 or bandwidth <= 0:
        raise ValueError(
            f"peak_flops and bandwidth must be positive, got {peak_flops} and {bandwidth}"
        )
    return max(flops / peak_flops, bytes / bandwidth)


def bound(flops: float, bytes: float, peak_flops: float, bandwidth: float) -> str:
    """``"memory"`` if moving the bytes takes at least as long as doing the flops, else
    ``"compute"``: which roof of the roofline the floor sits on."""
    roofline_floor(flops, bytes, peak_flops, bandwidth)  # validates the peaks
    return "memory" if bytes / bandwidth >= flops / peak_flops else "compute"
