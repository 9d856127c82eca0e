"""Convolution as a matrix: eq. (4) of Treister et al., built densely for a tiny image.

A convolution layer from ``c_in`` to ``c_out`` channels is a ``c_out x c_in`` block matrix
whose block ``(i, j)`` is :func:`convolution_matrix` of the stencil ``weight[i, j]``:

    K(θ) = [ C(θ_ij) ]_{i < c_out, j < c_in}                                   (eq. 4)

Images are flattened channel by channel, row by row (``x.reshape(-1)`` of a ``(C, H, W)``
tensor), so ``K @ x.reshape(-1)`` equals ``F.conv2d(x[None], weight, ...)[0].reshape(-1)``.
These matrices are the book's bridge between the papers' block pictures and the code, and
the tests' oracle for every structured convolution (through ``dense_weight()``).
"""

import torch

BOUNDARIES = ("zeros", "periodic")


def _output_size(n: int, k: int, stride: int, boundary: str) -> int:
    if boundary == "periodic":
        return (n - 1) // stride + 1
    return (n + 2 * (k // 2) - k) // stride + 1


def convolution_matrix(stencil: torch.Tensor, height: int, width: int, *, stride: int = 1,
                       boundary: str = "zeros") -> torch.Tensor:
    """C(θ): the ``(H_out W_out, H W)`` matrix of cross-correlating one channel with ``stencil``.

    Output pixel ``(p, q)`` reads input pixel ``(p s + u - kh//2, q s + v - kw//2)`` with
    weight ``stencil[u, v]``; outside the image that pixel is zero (``"zeros"``, i.e.
    ``padding=k//2``) or wraps around (``"periodic"``, i.e. ``padding_mode="circular"``).
    """
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary={boundary!r}; choose one of {', '.join(BOUNDARIES)}")
    if stencil.dim() != 2:
        raise ValueError(f"stencil must be 2-D (kh, kw); got shape {tuple(stencil.shape)}")
    kh, kw = stencil.shape
    h_out = _output_size(height, kh, stride, boundary)
    w_out = _output_size(width, kw, stride, boundary)
    C = stencil.new_zeros(h_out * w_out, height * width)
    for p in range(h_out):
        for q in range(w_out):
            for u in range(kh):
                for v in range(kw):
                    i, j = p * stride + u - kh // 2, q * stride + v - kw // 2
                    if boundary == "periodic":
                        i, j = i % height, j % width
                    elif not (0 <= i < height and 0 <= j < width):
                        continue
                    C[p * w_out + q, i * width + j] += stencil[u, v]
    return C


def conv2d_matrix(weight: torch.Tensor, height: int, width: int, *, stride: int = 1,
                  boundary: str = "zeros", groups: int = 1) -> torch.Tensor:
    """K(θ) of eq. (4): the block matrix of a convolution with ``weight`` ``(c_out, c_in/groups, kh, kw)``.

    With ``groups > 1`` the blocks that couple channels of different groups are zero
    (``groups = c_in = c_out`` is the depth-wise, block-diagonal operator of eq. (5)).
    """
    if weight.dim() != 4:
        raise ValueError(f"weight must be 4-D (c_out, c_in/groups, kh, kw); got {tuple(weight.shape)}")
    c_out, c_in_per_group = weight.shape[:2]
    if c_out % groups:
        raise ValueError(f"groups={groups} must divide the {c_out} output channels")
    c_in, out_per_group = c_in_per_group * groups, c_out // groups
    blocks = [[None] * c_in for _ in range(c_out)]
    for i in range(c_out):
        g = i // out_per_group
        for j in range(c_in):
            if j // c_in_per_group == g:
                stencil = weight[i, j - g * c_in_per_group]
            else:
                stencil = weight.new_zeros(weight.shape[2:])
            blocks[i][j] = convolution_matrix(stencil, height, width, stride=stride, boundary=boundary)
    return torch.cat([torch.cat(row, dim=1) for row in blocks], dim=0)
