"""The unravelled convolution (eqs. 4–5 of Wang, Liu & Foroosh) and the SIC layer as one fused
Triton operator with its backward.

    J = intra(x):  J[b, i·nb + t] = B[i, t] ⋆ x[b, i]                                         (eq. 4)
    y = P J (+ x)  y[b, j] = Σ_{i,t} P[j, i·nb + t] J[b, i·nb + t]  (+ x[b, j], section 2.2.3)  (eq. 5)

The forward is ``kernels/sic_triton.py``: eq. (4) computed in registers as the prologue of
eq. (5)'s GEMM, so ``J`` never reaches memory. The backward (``g = ∂L/∂y``):

- ``∂J = Pᵀ g``: a 1x1 convolution, run by the lean kernel with no taps (a GEMM on tensor cores);
- ``∂x = intraᵀ(∂J) (+ g)``: the depth-wise kernel with the flipped bases
  (:func:`~effconv_ref.ops.depthwise_conv.depthwise_grad_input_triton`);
- ``∂P = g Jᵀ`` (summed over the batch and pixels): ``J`` recomputed by the depth-wise kernel,
  then a GEMM;
- ``∂B``: the depth-wise weight gradient of ``∂J`` against ``x``; ``∂bias = Σ g``.
"""

from __future__ import annotations

import torch

from effconv_ref.kernels.triton_build import load_triton
from effconv_ref.ops.depthwise_conv import depthwise_conv2d_triton, depthwise_grad_input_triton, depthwise_grad_weight
from effconv_ref.ops.lean_conv import lean_conv2d_triton

__all__ = ["intra_pointwise_triton"]


@torch.library.triton_op("effconv::intra_pointwise", mutates_args=())
def intra_pointwise_triton(x: torch.Tensor, basis: torch.Tensor, proj: torch.Tensor, bias: torch.Tensor | None,
                           residual: bool) -> torch.Tensor:
    """Eqs. (4)–(5) fused: ``basis`` ``(c·b, 1, k, k)`` (``intra.weight``), ``proj`` ``(n, c·b, 1, 1)``
    (``proj.weight``), ``residual`` adds ``x`` (needs ``n = c``). Stride 1, zero padding ``k // 2``."""
    n = proj.shape[0]
    return load_triton("sic_triton").intra_pointwise_forward(
        x, basis.contiguous(), proj.reshape(n, -1).contiguous(),
        None if bias is None else bias.contiguous(), residual)


def _setup(ctx, inputs, output):
    x, basis, proj, bias, residual = inputs
    ctx.residual, ctx.has_bias = residual, bias is not None
    ctx.save_for_backward(x, basis, proj)


def _backward(ctx, grad_y):
    x, basis, proj = ctx.saved_tensors
    c, height, width = x.shape[1:]
    no_taps = proj.new_zeros(0, 4)
    grad_J = lean_conv2d_triton(grad_y, proj.transpose(0, 1), no_taps, None, 1)  # Pᵀ g
    grad_x = depthwise_grad_input_triton(grad_J, basis, 1, False, c, height, width)
    if ctx.residual:
        grad_x = grad_x + grad_y
    J = depthwise_conv2d_triton(x, basis, 1, False)
    grad_proj = torch.einsum("bjhw,bqhw->jq", grad_y, J).reshape(proj.shape)
    grad_basis = depthwise_grad_weight(grad_J, x, basis.shape, 1, False)
    grad_bias = grad_y.sum((0, 2, 3)) if ctx.has_bias else None
    return grad_x, grad_basis, grad_proj, grad_bias, None


intra_pointwise_triton.register_autograd(_backward, setup_context=_setup)
