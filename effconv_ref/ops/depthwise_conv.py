"""The direct depth-wise convolution of eq. (5) on the Triton path: a ``torch.library`` operator
with its backward.

    y[b, q, p, r] = Σ_{u,v} w[q, u, v] x[b, q // mult, ps + u − k//2, rs + v − k//2]          (eq. 5)

(``mult = 1`` for K_dw; ``mult = b`` gives the ``b`` basis filters per channel of eq. (4) of the
factorized-CNN paper.) The forward is ``kernels/depthwise_triton.py``. The backward:

- ``∂x`` by the same kernel: the adjoint of a correlation with ``w`` is the correlation with the
  flipped stencil, stride 1, applied to ``g`` placed back on the input's grid (``g[p, r]`` at
  ``(ps, rs)``, zeros between for stride 2); with ``mult > 1`` the ``mult`` filters of a channel
  are summed (one launch each);
- ``∂w[q, u, v] = Σ g[b, q, p, r] x[b, q // mult, ps + u − k//2, rs + v − k//2]``: a reduction,
  PyTorch's convolution weight gradient (``torch.nn.grad.conv2d_weight``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from effconv_ref.kernels.triton_build import load_triton

__all__ = ["depthwise_conv2d_triton", "depthwise_grad_input_triton", "depthwise_grad_weight"]


@torch.library.triton_op("effconv::depthwise_conv2d", mutates_args=())
def depthwise_conv2d_triton(x: torch.Tensor, weight: torch.Tensor, stride: int, periodic: bool) -> torch.Tensor:
    """Eq. (5) by the Triton kernel: ``weight`` ``(C·mult, 1, k, k)``, zero padding ``k // 2`` or
    periodic; output ``(B, C·mult, ⌈H/s⌉, ⌈W/s⌉)``."""
    return load_triton("depthwise_triton").depthwise_forward(x, weight.contiguous(), stride, periodic)


def depthwise_grad_input_triton(g: torch.Tensor, weight: torch.Tensor, stride: int, periodic: bool,
                                channels: int, height: int, width: int) -> torch.Tensor:
    """∂L/∂x by the forward kernel: the flipped stencils, stride 1, on ``g`` placed back on the
    input's grid; each channel's ``mult`` filters summed."""
    if stride == 2:
        on_grid = g.new_zeros(g.shape[0], g.shape[1], height, width)
        on_grid[:, :, ::2, ::2] = g
        g = on_grid
    flipped = weight.flip(-2, -1)
    mult = weight.shape[0] // channels
    grad = 0
    for t in range(mult):  # filter t of every channel: channels t, mult + t, 2 mult + t, ...
        grad = grad + depthwise_conv2d_triton(g[:, t::mult], flipped[t::mult], 1, periodic)
    return grad


def depthwise_grad_weight(g: torch.Tensor, x: torch.Tensor, weight_shape, stride: int, periodic: bool) -> torch.Tensor:
    """∂L/∂w: the correlation of ``g`` with the input, summed over the batch and the pixels."""
    r = weight_shape[-1] // 2
    if periodic:
        x, padding = F.pad(x, (r, r, r, r), mode="circular"), 0
    else:
        padding = r
    return torch.nn.grad.conv2d_weight(x, weight_shape, g, stride=stride, padding=padding, groups=x.shape[1])


def _setup(ctx, inputs, output):
    x, weight, stride, periodic = inputs
    ctx.stride, ctx.periodic = stride, periodic
    ctx.save_for_backward(x, weight)


def _backward(ctx, grad_y):
    x, weight = ctx.saved_tensors
    grad_x = grad_weight = None
    if ctx.needs_input_grad[0]:
        grad_x = depthwise_grad_input_triton(grad_y, weight, ctx.stride, ctx.periodic, *x.shape[1:])
    if ctx.needs_input_grad[1]:
        grad_weight = depthwise_grad_weight(grad_y, x, weight.shape, ctx.stride, ctx.periodic)
    return grad_x, grad_weight, None, None


depthwise_conv2d_triton.register_autograd(_backward, setup_context=_setup)
