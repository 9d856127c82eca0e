"""The lean convolution (eqs. 3–4) as one Triton kernel on tensor cores.

One program computes a tile of ``BLOCK_P`` output pixels x ``BLOCK_O`` output channels of one
image. The 1x1 part, ``Σ_i α[o, i] x[i, ps, qs]``, is a GEMM over the input channels: the loop
loads a ``BLOCK_P x BLOCK_I`` tile of the input and a ``BLOCK_I x BLOCK_O`` tile of ``αᵀ`` and
hands them to ``tl.dot``, which runs on tensor cores (``mma`` on sm_80, ``wgmma`` on sm_90). The
four taps of eq. (4) are the epilogue: while the accumulator is still in registers, each output
channel ``o < m`` adds ``c_k[o] x[o, ps + dy_k, qs + dx_k]``. Those reads hit the tile the GEMM
just streamed through (cache, not DRAM), so the layer costs one read of ``x`` and one write of
``y``: the bytes of the 1x1 convolution alone.

The kernel takes any strides, so NCHW, channels_last and non-contiguous inputs run as they are.
The backward for ``x`` is the same kernel (see :mod:`effconv_ref.ops.lean_conv`).
"""

import torch
import triton
import triton.language as tl

from effconv_ref.kernels.triton_build import Config, accumulator, autotuned, dot_precision, launch, memory_format_of

# (BLOCK_P pixels, BLOCK_O output channels, BLOCK_I input channels per step). tl.dot needs every
# block >= 16; wgmma (sm_90) wants 64 x N tiles with 4 warps.
CONFIGS = [
    Config((("BLOCK_P", 64), ("BLOCK_O", 64), ("BLOCK_I", 32)), num_warps=4, num_stages=3),
    Config((("BLOCK_P", 128), ("BLOCK_O", 64), ("BLOCK_I", 32)), num_warps=4, num_stages=3),
    Config((("BLOCK_P", 128), ("BLOCK_O", 128), ("BLOCK_I", 32)), num_warps=8, num_stages=3),
    Config((("BLOCK_P", 64), ("BLOCK_O", 32), ("BLOCK_I", 16)), num_warps=4, num_stages=2),
]


@triton.jit
def _tap(acc, x_image, taps_ptr, o, o_has_stencil, h, w, pixel_ok, H, W, sxc, sxh, sxw,
         K: tl.constexpr, DY: tl.constexpr, DX: tl.constexpr, ACC: tl.constexpr):
    """Eq. (4)'s tap ``k``: ``acc[p, o] += c_k[o] x[o, h + DY, w + DX]`` (zero outside the image)."""
    hh = h + DY
    ww = w + DX
    inside = pixel_ok & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
    c_k = tl.load(taps_ptr + o * 4 + K, mask=o_has_stencil, other=0.0)
    x_k = tl.load(x_image + o[None, :] * sxc + (hh * sxh + ww * sxw)[:, None],
                  mask=inside[:, None] & o_has_stencil[None, :], other=0.0)
    return acc + x_k.to(ACC) * c_k[None, :]


@triton.jit
def lean_kernel(x_ptr, alpha_ptr, taps_ptr, bias_ptr, y_ptr,
                C_IN, C_OUT, M, H, W, HO, WO,
                sxb, sxc, sxh, sxw, syb, syc, syh, syw,
                STRIDE: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
                ACC: tl.constexpr,
                BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr):
    """``y[b, o, p, q] = Σ_i α[o, i] x[b, i, ps, qs] + [o < M] Σ_k c_k[o] x[b, o, ps + dy_k, qs + dx_k]
    (+ bias[o])``: eqs. (3)–(4). ``alpha`` is ``(C_OUT, C_IN)`` contiguous, ``taps`` ``(M, 4)``
    float32 in the order up, left, right, down."""
    pid_p = tl.program_id(0)
    pid_o = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)  # output pixels, row-major over (HO, WO)
    o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)  # output channels
    pixel_ok = p < HO * WO
    o_ok = o < C_OUT
    h = (p // WO) * STRIDE  # the centre tap (ps, qs) in the input
    w = (p % WO) * STRIDE
    x_image = x_ptr + b * sxb
    centre = (h * sxh + w * sxw)[:, None]

    # the 1x1 part: a GEMM over the input channels, on tensor cores
    acc = tl.zeros((BLOCK_P, BLOCK_O), dtype=ACC)
    for i0 in range(0, C_IN, BLOCK_I):
        i = i0 + tl.arange(0, BLOCK_I)
        i_ok = i < C_IN
        x_tile = tl.load(x_image + i[None, :] * sxc + centre, mask=pixel_ok[:, None] & i_ok[None, :], other=0.0)
        alpha_t = tl.load(alpha_ptr + o[None, :] * C_IN + i[:, None], mask=i_ok[:, None] & o_ok[None, :], other=0.0)
        acc = tl.dot(x_tile, alpha_t, acc, input_precision=PRECISION)

    # the epilogue: the four off-centre taps of eq. (4), on the block diagonal o < M
    o_has_stencil = o < M
    acc = _tap(acc, x_image, taps_ptr, o, o_has_stencil, h, w, pixel_ok, H, W, sxc, sxh, sxw, 0, -1, 0, ACC)  # up
    acc = _tap(acc, x_image, taps_ptr, o, o_has_stencil, h, w, pixel_ok, H, W, sxc, sxh, sxw, 1, 0, -1, ACC)  # left
    acc = _tap(acc, x_image, taps_ptr, o, o_has_stencil, h, w, pixel_ok, H, W, sxc, sxh, sxw, 2, 0, 1, ACC)  # right
    acc = _tap(acc, x_image, taps_ptr, o, o_has_stencil, h, w, pixel_ok, H, W, sxc, sxh, sxw, 3, 1, 0, ACC)  # down
    if HAS_BIAS:
        acc += tl.load(bias_ptr + o, mask=o_ok, other=0.0)[None, :]

    y_at = y_ptr + b * syb + o[None, :] * syc + ((p // WO) * syh + (p % WO) * syw)[:, None]
    tl.store(y_at, acc.to(y_ptr.dtype.element_ty), mask=pixel_ok[:, None] & o_ok[None, :])


autotuned(lean_kernel, CONFIGS, key=["C_IN", "C_OUT", "HO", "WO", "STRIDE"])


def lean_forward(x, alpha, taps, bias, stride: int, config=None):
    """Launch :func:`lean_kernel`: ``x`` ``(B, in, H, W)``, ``alpha`` ``(out, in)`` contiguous in
    ``x``'s dtype, ``taps`` ``(m, 4)``, ``bias`` ``(out,)`` or ``None``. The output has ``x``'s
    memory format (NCHW or channels_last)."""
    batch, c_in, height, width = x.shape
    c_out = alpha.shape[0]
    ho, wo = -(-height // stride), -(-width // stride)
    y = torch.empty(batch, c_out, ho, wo, dtype=x.dtype, device=x.device, memory_format=memory_format_of(x))
    if y.numel() == 0:
        return y

    def grid(meta):
        return triton.cdiv(ho * wo, meta["BLOCK_P"]), triton.cdiv(c_out, meta["BLOCK_O"]), batch

    launch(lean_kernel, CONFIGS, grid, x, alpha, taps, taps if bias is None else bias, y,
           c_in, c_out, taps.shape[0], height, width, ho, wo, *x.stride(), *y.stride(), config=config,
           ACC=accumulator(x.dtype), STRIDE=stride, HAS_BIAS=bias is not None, PRECISION=dot_precision(x.dtype))
    return y
