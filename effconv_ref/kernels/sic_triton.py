"""The unravelled convolution (Wang et al., eqs. 4–5) and the SIC layer (section 2.2.3) as one
Triton kernel: the intra-channel convolution is the prologue of the 1x1 GEMM.

Eq. (5) is a GEMM over the ``c·b`` intermediate channels ``J`` of eq. (4). One program computes
a ``BLOCK_P`` pixels x ``BLOCK_N`` output channels tile; its loop over the ``c·b`` channels
builds each ``BLOCK_P x BLOCK_Q`` tile of ``J`` in registers, ``J[:, q] = Σ_{u,v} B[q, u, v]
x[q // b, p + (u, v) − k//2]`` (the depth-wise prologue, FMAs on the CUDA cores), and hands it
with a ``BLOCK_Q x BLOCK_N`` tile of ``Pᵀ`` to ``tl.dot`` (tensor cores). ``J`` never reaches
memory: the layer reads ``x`` and writes ``y`` once, where the two-kernel version writes and
re-reads ``b`` times the input. The epilogue adds SIC's residual ``x`` and the bias.

Stride 1 and zero padding ``k // 2``, as the paper's layers. The operands of ``tl.dot`` are in
the input's dtype (``J`` is rounded to it, as the two-kernel version would store it).
"""

import torch
import triton
import triton.language as tl

from effconv_ref.kernels.triton_build import Config, accumulator, autotuned, dot_precision, launch, memory_format_of

CONFIGS = [
    Config((("BLOCK_P", 64), ("BLOCK_N", 64), ("BLOCK_Q", 32)), num_warps=4, num_stages=2),
    Config((("BLOCK_P", 128), ("BLOCK_N", 64), ("BLOCK_Q", 32)), num_warps=4, num_stages=2),
    Config((("BLOCK_P", 128), ("BLOCK_N", 128), ("BLOCK_Q", 32)), num_warps=8, num_stages=2),
    Config((("BLOCK_P", 64), ("BLOCK_N", 32), ("BLOCK_Q", 16)), num_warps=4, num_stages=2),
]


@triton.jit
def intra_pointwise_kernel(x_ptr, basis_ptr, proj_ptr, bias_ptr, y_ptr,
                           C, N, H, W,
                           sxb, sxc, sxh, sxw, syb, syc, syh, syw,
                           K: tl.constexpr, BASES: tl.constexpr, RESIDUAL: tl.constexpr,
                           HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
                           BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_Q: tl.constexpr):
    """``y[b, j, p] = Σ_q P[j, q] J[b, q, p] (+ x[b, j, p]) (+ bias[j])`` with
    ``J[b, q, p] = Σ_{u,v} B[q, u, v] x[b, q // BASES, p + (u, v) − K//2]``: eqs. (4)–(5).
    ``basis`` is ``(C·BASES, K, K)`` and ``proj`` ``(N, C·BASES)``, both contiguous."""
    pid_p = tl.program_id(0)
    pid_n = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)  # pixels, row-major over (H, W)
    j = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # output channels
    pixel_ok = p < H * W
    j_ok = j < N
    h = p // W
    w = p % W
    x_image = x_ptr + b * sxb
    acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=ACC)
    for q0 in range(0, C * BASES, BLOCK_Q):
        q = q0 + tl.arange(0, BLOCK_Q)  # intermediate channels of eq. (4)
        q_ok = q < C * BASES
        channel = q // BASES
        # the prologue: this tile of J, eq. (4), in registers
        J = tl.zeros((BLOCK_P, BLOCK_Q), dtype=ACC)
        for u in tl.static_range(K):
            hh = h + (u - K // 2)
            for v in tl.static_range(K):
                ww = w + (v - K // 2)
                inside = pixel_ok & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
                B_uv = tl.load(basis_ptr + q * K * K + u * K + v, mask=q_ok, other=0.0)
                x_uv = tl.load(x_image + channel[None, :] * sxc + (hh * sxh + ww * sxw)[:, None],
                               mask=inside[:, None] & q_ok[None, :], other=0.0)
                J += x_uv.to(ACC) * B_uv.to(ACC)[None, :]
        # eq. (5): the projection, on tensor cores
        proj_t = tl.load(proj_ptr + j[None, :] * (C * BASES) + q[:, None], mask=q_ok[:, None] & j_ok[None, :], other=0.0)
        acc = tl.dot(J.to(proj_t.dtype), proj_t, acc, input_precision=PRECISION)
    if RESIDUAL:  # section 2.2.3: the input added to the projection's output (N = C)
        acc += tl.load(x_image + j[None, :] * sxc + (h * sxh + w * sxw)[:, None],
                       mask=pixel_ok[:, None] & j_ok[None, :], other=0.0).to(ACC)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + j, mask=j_ok, other=0.0).to(ACC)[None, :]
    y_at = y_ptr + b * syb + j[None, :] * syc + (h * syh + w * syw)[:, None]
    tl.store(y_at, acc.to(y_ptr.dtype.element_ty), mask=pixel_ok[:, None] & j_ok[None, :])


autotuned(intra_pointwise_kernel, CONFIGS, key=["C", "N", "H", "W", "K", "BASES"])


def intra_pointwise_forward(x, basis, proj, bias, residual: bool, config=None):
    """Launch :func:`intra_pointwise_kernel`: ``x`` ``(B, c, H, W)``, ``basis`` ``(c·b, 1, k, k)``
    and ``proj`` ``(n, c·b)`` contiguous in ``x``'s dtype, ``bias`` ``(n,)`` or ``None``."""
    batch, c, height, width = x.shape
    n, k = proj.shape[0], basis.shape[-1]
    y = torch.empty(batch, n, height, width, dtype=x.dtype, device=x.device, memory_format=memory_format_of(x))
    if y.numel() == 0:
        return y

    def grid(meta):
        return triton.cdiv(height * width, meta["BLOCK_P"]), triton.cdiv(n, meta["BLOCK_N"]), batch

    launch(intra_pointwise_kernel, CONFIGS, grid, x, basis, proj, proj if bias is None else bias, y,
           c, n, height, width, *x.stride(), *y.stride(), config=config, ACC=accumulator(x.dtype),
           K=k, BASES=basis.shape[0] // c, RESIDUAL=residual, HAS_BIAS=bias is not None,
           PRECISION=dot_precision(x.dtype))
    return y
