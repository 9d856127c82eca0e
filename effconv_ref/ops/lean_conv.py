"""The lean convolution of eqs. (3)–(4) (Ephrath et al., LeanResNet): a 1x1 convolution plus a
4-point depth-wise stencil, as one operator.

    y = K_lean x,   K_lean = [α_ij I]_{i,j}  +  diag(Ĉ_1 − α_11 I, …, Ĉ_m − α_mm I)        (eq. 3)

Output channel ``o`` of pixel ``(p, q)`` (stride ``s``, zero padding 1) is

    y[o, p, q] = Σ_i α[o, i] x[i, ps, qs]
               + [o < m] ( c1[o] x[o, ps−1, qs] + c2[o] x[o, ps, qs−1]
                         + c3[o] x[o, ps, qs+1] + c4[o] x[o, ps+1, qs] )                    (eq. 4)

with ``α = pointwise[:, :, 0, 0]`` ``(out, in)``, ``(c1, c2, c3, c4) = stencil[o]`` the up,
left, right and down taps, and ``m = min(in, out)``: output channel ``o < m`` gets the stencil
of input channel ``o``, the others only the 1x1 part. The centre of channel ``o``'s 5-point
kernel is ``α[o, o]``.

Two paths compute it:

- :func:`lean_conv2d_reference`: ``F.conv2d`` with the 1x1 weight plus a depth-wise
  ``F.conv2d`` of the first ``m`` channels with the 3x3 kernels of :func:`stencil_kernels`
  (zero centre and corners). Plain PyTorch; autograd does the backward.
- ``kernels/lean.cu``: one fused kernel that reads each input value once and produces both
  terms (float32, float16, bfloat16; float accumulation), with a fused backward for the input
  and a reduction kernel for the stencil, wrapped in :class:`LeanConv`. FP32 FMAs on the CUDA
  cores: the kernel chapter 3 reads.
- ``kernels/lean_triton.py``: the same fusion in Triton with the 1x1 part as a ``tl.dot`` GEMM on
  tensor cores and the taps as its epilogue, registered as the operator ``effconv::lean_conv2d``
  (:func:`lean_conv2d_triton`, traced by ``torch.compile``). Its backward for ``x`` is the same
  kernel (:func:`lean_grad_input_triton`); the weight gradients are a GEMM and four reductions.

:class:`LeanConv` writes its backward out by formula (see its docstring). With
``use_cuda=False`` it runs those formulas in PyTorch, so ``gradcheck`` on the CPU checks the
math that the CUDA backward implements.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from effconv_ref.backend import resolve_backend
from effconv_ref.checks import autocast_operands, check_dtype, check_input, check_one_dtype
from effconv_ref.kernels import load_cuda
from effconv_ref.kernels.triton_build import load_triton

__all__ = [
    "BACKENDS",
    "CUDA_DTYPES",
    "STRIDES",
    "TAPS",
    "LeanConv",
    "lean_conv2d",
    "lean_conv2d_reference",
    "lean_conv2d_triton",
    "lean_grad_input_triton",
    "lean_dense_weight",
    "stencil_kernels",
]

STRIDES = (1, 2)
BACKENDS = ("auto", "reference", "cuda", "triton")
CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# the four off-centre taps of eq. (4) as (row, column) offsets: c1 up, c2 left, c3 right, c4 down
TAPS = ((-1, 0), (0, -1), (0, 1), (1, 0))

_DECLARATIONS = """
torch::Tensor lean_forward(torch::Tensor x, torch::Tensor weight, torch::Tensor taps, torch::Tensor bias,
                           int64_t stride);
torch::Tensor lean_backward_input(torch::Tensor g, torch::Tensor weight, torch::Tensor taps, int64_t stride,
                                  int64_t height, int64_t width);
torch::Tensor lean_grad_stencil(torch::Tensor g, torch::Tensor x, int64_t stride, int64_t m);
"""


def _kernel():
    return load_cuda(
        "lean",
        ["lean.cu"],
        _DECLARATIONS,
        ["lean_forward", "lean_backward_input", "lean_grad_stencil"],
    )


def stencil_kernels(stencil: torch.Tensor) -> torch.Tensor:
    """The ``(m, 1, 3, 3)`` depth-wise kernels of the taps ``stencil`` ``(m, 4)``: eq. (4) without its centre.

    ``[[0, c1, 0], [c2, 0, c3], [0, c4, 0]]`` in ``F.conv2d``'s cross-correlation convention.
    """
    kernel = stencil.new_zeros(stencil.shape[0], 3, 3)
    for (dy, dx), tap in zip(TAPS, stencil.unbind(1)):
        kernel[:, 1 + dy, 1 + dx] = tap
    return kernel.unsqueeze(1)


def lean_dense_weight(pointwise: torch.Tensor, stencil: torch.Tensor) -> torch.Tensor:
    """The equivalent ``(out, in, 3, 3)`` weight: ``α`` at every centre, the taps on the block diagonal."""
    dense = F.pad(pointwise, (1, 1, 1, 1))
    idx = torch.arange(stencil.shape[0], device=dense.device)
    return dense.index_put((idx, idx), dense[idx, idx] + stencil_kernels(stencil)[:, 0])


def lean_conv2d_reference(x: torch.Tensor, pointwise: torch.Tensor, stencil: torch.Tensor,
                          bias: torch.Tensor | None = None, stride: int = 1) -> torch.Tensor:
    """Eq. (3) in plain PyTorch: the 1x1 convolution plus the depth-wise 4-point stencil."""
    m = stencil.shape[0]
    y = F.conv2d(x, pointwise, bias, stride=stride)  # Σ_i α_oi x_i, centre taps included
    z = F.conv2d(x[:, :m], stencil_kernels(stencil), stride=stride, padding=1, groups=m)
    return y + F.pad(z, (0, 0, 0, 0, 0, y.shape[1] - m))  # the stencil reaches channels o < m only


# ---- the backward, by formula (the CUDA backward computes the same) --------------------------

def _tap_view(padded: torch.Tensor, dy: int, dx: int, stride: int, ho: int, wo: int) -> torch.Tensor:
    """The pixels ``(p s + dy, q s + dx)``, ``p < ho``, ``q < wo``, of an image padded by one pixel."""
    rows = slice(1 + dy, 2 + dy + stride * (ho - 1), stride)
    cols = slice(1 + dx, 2 + dx + stride * (wo - 1), stride)
    return padded[:, :, rows, cols]


def _grad_input(g, pointwise, stencil, stride, height, width):
    """∂L/∂x: ``αᵀ g`` on the centres ``(p s, q s)``, plus each tap's ``c_k g`` scattered back to
    the pixel it read (the adjoint of the gather); pixels that no output read get zero."""
    m, (ho, wo) = stencil.shape[0], g.shape[-2:]
    grad = g.new_zeros(g.shape[0], pointwise.shape[1], height + 2, width + 2)  # padded by one
    grad[:, :, 1:height + 1:stride, 1:width + 1:stride] = torch.einsum("oi,bopq->bipq", pointwise[:, :, 0, 0], g)
    for (dy, dx), tap in zip(TAPS, stencil.unbind(1)):
        _tap_view(grad[:, :m], dy, dx, stride, ho, wo).add_(tap[:, None, None] * g[:, :m])
    return grad[:, :, 1:height + 1, 1:width + 1]


def _grad_pointwise(g, x, stride):
    """∂L/∂α = Σ_{b,p,q} g[b, o, p, q] x[b, i, ps, qs]: a batched GEMM (cuBLAS on the GPU)."""
    centres = x[:, :, ::stride, ::stride]
    grad = torch.matmul(g.flatten(2), centres.flatten(2).transpose(1, 2)).sum(0)
    return grad[:, :, None, None]


def _grad_stencil(g, x, m, stride):
    """∂L/∂c_k[o] = Σ_{b,p,q} g[b, o, p, q] x[b, o, ps + dy_k, qs + dx_k] (zero outside the image)."""
    padded = F.pad(x[:, :m], (1, 1, 1, 1))
    ho, wo = g.shape[-2:]
    return torch.stack(
        [(g[:, :m] * _tap_view(padded, dy, dx, stride, ho, wo)).sum((0, 2, 3)) for dy, dx in TAPS], dim=1
    )


class LeanConv(torch.autograd.Function):
    """``y = lean(x; α, c, bias)`` with an explicit backward (``g = ∂L/∂y``, sums over b, p, q):

    - ``∂x``: ``αᵀ g`` at the pixels ``(ps, qs)`` plus, for input channels ``i < m``, the
      adjoint stencil: ``c_k[i] g[i, p, q]`` added at ``(ps + dy_k, qs + dx_k)``. For stride 1
      that is the 4-point stencil with mirrored taps (down, right, left, up) applied to ``g``.
    - ``∂α[o, i] = Σ g[o, p, q] x[i, ps, qs]``
    - ``∂c_k[o] = Σ g[o, p, q] x[o, ps + dy_k, qs + dx_k]``, ``o < m``
    - ``∂bias[o] = Σ g[o, p, q]``

    ``use_cuda=True`` runs ``kernels/lean.cu`` (inputs on the GPU; float32, float16 or
    bfloat16); ``use_cuda=False`` runs the reference forward and the formulas above in PyTorch.
    """

    @staticmethod
    def forward(ctx, x, pointwise, stencil, bias, stride: int, use_cuda: bool):
        ctx.stride, ctx.use_cuda = stride, use_cuda
        ctx.save_for_backward(x, pointwise, stencil)
        if not use_cuda:
            return lean_conv2d_reference(x, pointwise, stencil, bias, stride)
        cout, cin = pointwise.shape[:2]
        no_bias = torch.empty(0, dtype=torch.float32, device=x.device)
        return _kernel().lean_forward(
            x.contiguous(), pointwise.detach().reshape(cout, cin).float(), stencil.detach().float(),
            no_bias if bias is None else bias.detach().float(), stride,
        )

    @staticmethod
    def backward(ctx, grad_y):
        x, pointwise, stencil = ctx.saved_tensors
        stride, m = ctx.stride, stencil.shape[0]
        need_x, need_pointwise, need_stencil, need_bias = ctx.needs_input_grad[:4]
        grad_y = grad_y.contiguous()
        grad_x = grad_pointwise = grad_stencil = grad_bias = None
        if ctx.use_cuda:
            cout, cin = pointwise.shape[:2]
            if need_x:
                grad_x = _kernel().lean_backward_input(
                    grad_y, pointwise.reshape(cout, cin).float(), stencil.float(), stride, x.shape[2], x.shape[3]
                )
            if need_stencil:
                grad_stencil = _kernel().lean_grad_stencil(grad_y, x, stride, m).to(stencil.dtype)
        else:
            if need_x:
                grad_x = _grad_input(grad_y, pointwise, stencil, stride, x.shape[2], x.shape[3])
            if need_stencil:
                grad_stencil = _grad_stencil(grad_y, x, m, stride)
        if need_pointwise:
            grad_pointwise = _grad_pointwise(grad_y, x, stride).to(pointwise.dtype)
        if need_bias:
            grad_bias = grad_y.sum((0, 2, 3))
        return grad_x, grad_pointwise, grad_stencil, grad_bias, None, None


# ---- the Triton path: a torch.library operator with its backward ------------------------------

@torch.library.triton_op("effconv::lean_conv2d", mutates_args=())
def lean_conv2d_triton(x: torch.Tensor, pointwise: torch.Tensor, stencil: torch.Tensor,
                       bias: torch.Tensor | None, stride: int) -> torch.Tensor:
    """Eqs. (3)–(4) by the Triton kernel: one GEMM on tensor cores with the taps as its epilogue.
    ``x`` and the parameters share one dtype (float32, float16, bfloat16); any memory layout."""
    cout, cin = pointwise.shape[:2]
    return load_triton("lean_triton").lean_forward(
        x, pointwise.reshape(cout, cin).contiguous(), stencil.contiguous(),
        None if bias is None else bias.contiguous(), stride)


def lean_grad_input_triton(g: torch.Tensor, pointwise: torch.Tensor, stencil: torch.Tensor, stride: int,
                           height: int, width: int) -> torch.Tensor:
    """∂L/∂x by the forward kernel: the adjoint of eq. (4) is a lean convolution with ``αᵀ`` and the
    mirrored taps (down, right, left, up), stride 1, applied to ``g`` placed back on the input's
    grid (``g[p, q]`` at ``(ps, qs)``, zeros between for stride 2)."""
    if stride == 2:
        on_grid = g.new_zeros(g.shape[0], g.shape[1], height, width)
        on_grid[:, :, ::2, ::2] = g
        g = on_grid
    return lean_conv2d_triton(g, pointwise.transpose(0, 1).contiguous(), stencil.flip(1), None, 1)


def _setup_lean_triton(ctx, inputs, output):
    x, pointwise, stencil, bias, stride = inputs
    ctx.stride, ctx.has_bias = stride, bias is not None
    ctx.save_for_backward(x, pointwise, stencil)


def _backward_lean_triton(ctx, grad_y):
    x, pointwise, stencil = ctx.saved_tensors
    stride, m = ctx.stride, stencil.shape[0]
    grad_x = lean_grad_input_triton(grad_y, pointwise, stencil, stride, x.shape[2], x.shape[3])
    grad_pointwise = _grad_pointwise(grad_y, x, stride)
    grad_stencil = _grad_stencil(grad_y, x, m, stride)
    grad_bias = grad_y.sum((0, 2, 3)) if ctx.has_bias else None
    return grad_x, grad_pointwise, grad_stencil, grad_bias, None


lean_conv2d_triton.register_autograd(_backward_lean_triton, setup_context=_setup_lean_triton)


# ---- checks and the public function ------------------------------------------------------------

def check_stride(stride) -> int:
    """``stride`` must be 1 or 2 (the kernel's tiles are built for those two)."""
    if isinstance(stride, bool) or not isinstance(stride, int):
        raise TypeError(f"stride must be an int (1 or 2); got {type(stride).__name__}")
    if stride not in STRIDES:
        raise ValueError(f"stride={stride} is not supported; the lean convolution supports stride 1 and 2")
    return stride


def _check_parameters(pointwise, stencil, bias) -> None:
    if pointwise.dim() != 4 or pointwise.shape[2:] != (1, 1):
        raise ValueError(f"pointwise must be (out, in, 1, 1); got shape {tuple(pointwise.shape)}")
    out_channels, in_channels = pointwise.shape[:2]
    m = min(in_channels, out_channels)
    if stencil.shape != (m, 4):
        raise ValueError(
            f"stencil must be (min(in, out), 4) = ({m}, 4) for pointwise {tuple(pointwise.shape)}; "
            f"got shape {tuple(stencil.shape)}"
        )
    if bias is not None and bias.shape != (out_channels,):
        raise ValueError(f"bias must be (out,) = ({out_channels},); got shape {tuple(bias.shape)}")


def lean_conv2d(x: torch.Tensor, pointwise: torch.Tensor, stencil: torch.Tensor,
                bias: torch.Tensor | None = None, stride: int = 1, backend: str = "auto") -> torch.Tensor:
    """The lean convolution (eqs. 3–4) of ``x`` ``(B, in, H, W)``: ``(B, out, ⌈H/s⌉, ⌈W/s⌉)``.

    Equals ``F.conv2d(x, lean_dense_weight(pointwise, stencil), bias, stride, padding=1)``.
    ``backend``: ``"reference"`` (plain PyTorch), ``"cuda"`` (the fused CUDA kernel: a GPU and a
    float32/float16/bfloat16 input), ``"triton"`` (the tensor-core kernel: a GPU, or the CPU under
    ``TRITON_INTERPRET=1``; the same dtypes; float32 in TF32 when
    ``torch.backends.cudnn.allow_tf32``, as a float32 ``nn.Conv2d`` would), or ``"auto"`` (the rule
    in :mod:`effconv_ref.backend`).

    dtypes: outside ``torch.autocast`` ``x`` and the parameters share one dtype. Under autocast
    both paths compute in autocast's dtype (the reference through ``F.conv2d``, the kernel on
    inputs cast to it), as ``nn.Conv2d`` would. An empty batch returns an empty batch.
    Non-finite input differs between the paths (so between ``"auto"`` on a CPU and on a GPU):
    the reference's depth-wise part is a 3x3 ``F.conv2d`` whose corner and centre taps are zero,
    and ``0 · inf = nan``, so an ``inf`` pixel gives ``nan`` at the centre and the four corners
    of its 3x3 neighbourhood (``±inf`` at the four taps) in its own channel; the kernel reads
    only the five stencil points, so it gives ``±inf`` there and finite corners. Both give a
    non-finite value at that pixel in every output channel (the 1x1 part).
    """
    _check_parameters(pointwise, stencil, bias)
    check_input(x, pointwise.shape[1], argument="in_channels")
    check_stride(stride)
    check_dtype(x, *[p for p in (pointwise, stencil, bias) if p is not None])
    if backend in ("cuda", "triton") and x.dtype not in CUDA_DTYPES:
        raise TypeError(
            f"backend={backend!r} supports float32, float16 and bfloat16 inputs; got {x.dtype} "
            "(use backend='reference' or 'auto' for other dtypes)"
        )
    path = resolve_backend(backend, x, BACKENDS)
    if path != "reference" and x.dtype not in CUDA_DTYPES:
        path = "reference"  # "auto": the kernels do not take this dtype
    if path == "reference":
        return lean_conv2d_reference(x, pointwise, stencil, bias, stride)
    x, pointwise, stencil, bias = autocast_operands(x, pointwise, stencil, bias)
    check_one_dtype(x, pointwise, stencil, bias)
    if path == "triton":
        return lean_conv2d_triton(x, pointwise, stencil, bias, stride)
    return LeanConv.apply(x.contiguous(), pointwise, stencil, bias, stride, True)
