"""The depth-wise convolution K_dw of eq. (5) (Treister et al.) as a direct Triton kernel.

One program computes a ``BLOCK_H x BLOCK_W`` tile of one output channel of one image: it walks
the ``k x k`` taps, and for each loads the shifted input tile (zero or periodic padding by
masks and index arithmetic, never a padded copy) and adds ``w[u, v] · x``. Every input value is
read from DRAM about once (the ``k²`` re-reads hit the cache), so the layer is memory-bound: its
floor is one read of ``x`` and one write of ``y`` at copy bandwidth. There is no ``tl.dot``: a
depth-wise stencil has no channel sum for tensor cores to do.

Output channel ``q`` reads input channel ``q // MULT``: ``MULT = 1`` is K_dw; ``MULT = b`` is the
``b`` basis filters per channel of the unravelled convolution (Wang et al., eq. 4). Stride 1 or 2;
``y`` is ``(B, C·MULT, ⌈H/s⌉, ⌈W/s⌉)``. The backward for ``x`` is the same kernel (see
:mod:`effconv_ref.ops.depthwise_conv`).
"""

import torch
import triton
import triton.language as tl

from effconv_ref.kernels.triton_build import Config, accumulator, autotuned, launch, memory_format_of

CONFIGS = [
    Config((("BLOCK_H", 8), ("BLOCK_W", 32)), num_warps=4, num_stages=2),
    Config((("BLOCK_H", 16), ("BLOCK_W", 32)), num_warps=4, num_stages=2),
    Config((("BLOCK_H", 4), ("BLOCK_W", 64)), num_warps=4, num_stages=2),
    Config((("BLOCK_H", 16), ("BLOCK_W", 64)), num_warps=8, num_stages=2),
]


@triton.jit
def depthwise_kernel(x_ptr, w_ptr, y_ptr, C_OUT, H, W, HO, WO,
                     sxb, sxc, sxh, sxw, syb, syc, syh, syw,
                     K: tl.constexpr, MULT: tl.constexpr, STRIDE: tl.constexpr, PERIODIC: tl.constexpr,
                     ACC: tl.constexpr,                     BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """``y[b, q, p, r] = Σ_{u,v} w[q, u, v] x[b, q // MULT, ps + u − k//2, rs + v − k//2]`` (eq. 5),
    zero outside the image, or wrapped around it when ``PERIODIC``."""
    pid_tile = tl.program_id(0)
    bq = tl.program_id(1).to(tl.int64)
    b = bq // C_OUT
    q = bq % C_OUT
    tiles_w = tl.cdiv(WO, BLOCK_W)
    p = (pid_tile // tiles_w) * BLOCK_H + tl.arange(0, BLOCK_H)  # output rows
    r = (pid_tile % tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)  # output columns
    out_ok = (p < HO)[:, None] & (r < WO)[None, :]
    x_plane = x_ptr + b * sxb + (q // MULT) * sxc
    acc = tl.zeros((BLOCK_H, BLOCK_W), dtype=ACC)
    for u in tl.static_range(K):
        hh = p * STRIDE + (u - K // 2)
        if PERIODIC:
            row_ok = p < HO
            hh = (hh + H) % H
        else:
            row_ok = (hh >= 0) & (hh < H)
        for v in tl.static_range(K):
            ww = r * STRIDE + (v - K // 2)
            if PERIODIC:
                col_ok = r < WO
                ww = (ww + W) % W
            else:
                col_ok = (ww >= 0) & (ww < W)
            w_uv = tl.load(w_ptr + q * K * K + u * K + v).to(ACC)
            x_uv = tl.load(x_plane + hh[:, None] * sxh + ww[None, :] * sxw,
                           mask=out_ok & row_ok[:, None] & col_ok[None, :], other=0.0)
            acc += w_uv * x_uv.to(ACC)
    y_at = y_ptr + b * syb + q * syc + p[:, None] * syh + r[None, :] * syw
    tl.store(y_at, acc.to(y_ptr.dtype.element_ty), mask=out_ok)


autotuned(depthwise_kernel, CONFIGS, key=["C_OUT", "HO", "WO", "K", "STRIDE"])


def depthwise_forward(x, weight, stride: int, periodic: bool, config=None):
    """Launch :func:`depthwise_kernel`: ``x`` ``(B, C, H, W)``, ``weight`` ``(C·MULT, 1, k, k)``
    contiguous. Periodic padding wraps once, so it needs ``k // 2 <= H, W`` (the module checks
    ``k <= H, W``)."""
    batch, channels, height, width = x.shape
    c_out, k = weight.shape[0], weight.shape[-1]
    ho, wo = -(-height // stride), -(-width // stride)
    y = torch.empty(batch, c_out, ho, wo, dtype=x.dtype, device=x.device, memory_format=memory_format_of(x))
    if y.numel() == 0:
        return y

    def grid(meta):
        return triton.cdiv(ho, meta["BLOCK_H"]) * triton.cdiv(wo, meta["BLOCK_W"]), batch * c_out

    launch(depthwise_kernel, CONFIGS, grid, x, weight, y, c_out, height, width, ho, wo,
           *x.stride(), *y.stride(), config=config, ACC=accumulator(x.dtype),
           K=k, MULT=c_out // channels, STRIDE=stride, PERIODIC=periodic)
    return y
