"""The operators of "Factorized Convolutional Neural Networks" (Wang, Liu & Foroosh, 2017).

A standard convolution (eq. 1) couples every input channel ``i`` to every output channel ``j``
through a ``k x k`` filter ``K(:, :, i, j)``: ``n c k² h w`` multiply-adds (eq. 2). The paper
factors it in three steps, each a module here:

- :class:`UnravelledConv2d`, eqs. (3)–(6): each input channel's filters are combinations of
  ``b`` basis filters, ``K(u, v, i, j) = Σ_t B(u, v, t, i) P(t, i, j)`` (eq. 3). Convolve every
  channel with its ``b`` bases (eq. 4: a depth-wise convolution with ``b`` outputs per channel),
  then project the ``c·b`` maps onto ``n`` outputs (eq. 5: a 1x1 convolution). Cost
  ``b c k² h w + b c n h w`` (eq. 6). With ``b = k²`` the bases span every ``k x k`` filter: the
  factorisation is exact for any ``K``.
- :class:`SICConv2d`, section 2.2: one basis per channel (``b = 1``) and a residual from the
  input of the intra-channel convolution to the output of the projection (2.2.3), so that
  ``b`` such layers in sequence replace one layer with ``b`` bases. Cost ``c k² h w + c n h w``
  (eq. 7) per layer.
- :class:`TpSConv2d`, section 2.3 and eq. (8): topological subdivisioning. The ``n`` channels
  sit on a grid ``d_1 x … x d_s`` and output channel ``(j_1, …, j_s)`` reads only the inputs
  ``((j_1 + i_1) mod d_1, …, (j_s + i_s) mod d_s)``, ``0 <= i_r < t_r``: a fraction
  ``∏ t_r / n`` of the connections. With ``kernel_size=1`` it is the thinned projection of a
  SIC layer.

Conventions: NCHW, cross-correlation (as ``torch.nn.Conv2d``; the paper's eq. 1 is written the
same way), zero padding ``k // 2`` so that the output has the input's size ("all the input is
padded with zeros so that the spatial dimensions of output is the same as input", section 2),
stride 1, odd ``k``. Indices in the docstrings are 0-based where the paper's are 1-based.

Every module has ``dense_weight()``, the equivalent ``(out, in, k, k)`` weight of one standard
convolution: eq. (3) multiplied out, or eq. (8)'s sparse pattern filled in.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from effconv_ref.backend import check_backend, resolve_backend
from effconv_ref.checks import (
    autocast_operands,
    check_channels,
    check_dtype,
    check_input,
    check_kernel_size,
    check_one_dtype,
    refuse_torchscript,
)
from effconv_ref.ops.intra_pointwise import intra_pointwise_triton
from effconv_ref.ops.lean_conv import CUDA_DTYPES

__all__ = [
    "SICConv2d",
    "TpSConv2d",
    "UnravelledConv2d",
    "neighborhood_indices",
    "sic_macs",
    "standard_macs",
    "tps_macs",
    "unravelled_macs",
]

TPS_BACKENDS = ("auto", "reference", "gather")
BACKENDS = ("auto", "reference", "triton")  # of the unravelled and SIC layers


def _fused(backend: str, x: torch.Tensor, intra: nn.Conv2d, proj: nn.Conv2d, residual: bool):
    """Eqs. (4)–(5) (+ the residual) by the fused Triton kernel when ``backend`` resolves to it
    for ``x``, else ``None`` (the caller runs its two ``nn.Conv2d``)."""
    if backend == "triton" and x.dtype not in CUDA_DTYPES:
        raise TypeError(f"backend='triton' supports float32, float16 and bfloat16 inputs; got {x.dtype} "
                        "(use backend='reference' or 'auto' for other dtypes)")
    if resolve_backend(backend, x, BACKENDS) != "triton" or x.dtype not in CUDA_DTYPES:
        return None
    x, basis, projection, bias = autocast_operands(x, intra.weight, proj.weight, proj.bias)
    check_one_dtype(x, basis, projection, bias)
    return intra_pointwise_triton(x, basis, projection, bias, residual)


# ----------------------------------------------------------------------------- costs
def standard_macs(c: int, n: int, k: int, h: int, w: int) -> int:
    """Eq. (2): multiply-adds of a standard ``k x k`` convolution, ``c -> n`` channels, ``h x w`` output."""
    return n * c * k * k * h * w


def unravelled_macs(c: int, n: int, k: int, b: int, h: int, w: int) -> int:
    """Eq. (6): ``b c k² h w`` (eq. 4, the bases) ``+ b c n h w`` (eq. 5, the projection)."""
    return b * c * k * k * h * w + b * c * n * h * w


def sic_macs(c: int, n: int, k: int, h: int, w: int) -> int:
    """Eq. (7): one SIC layer, ``c k² h w + c n h w`` (the residual's additions are not counted)."""
    return unravelled_macs(c, n, k, 1, h, w)


def tps_macs(n: int, k: int, prod_t: int, h: int, w: int) -> int:
    """Eq. (8): ``n`` outputs, each reading ``∏ t_r`` inputs through a ``k x k`` filter: the
    standard cost times the density ``∏ t_r / n``."""
    return n * prod_t * k * k * h * w


# ----------------------------------------------------------------------------- checks
def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int (>= 1); got {value!r}")
    return value


def _int_tuple(values, name: str) -> tuple:
    if isinstance(values, int) and not isinstance(values, bool):
        values = (values,)
    if not isinstance(values, Sequence) or isinstance(values, str) or len(values) == 0:
        raise ValueError(f"{name} must be a non-empty sequence of positive ints; got {values!r}")
    return tuple(_positive_int(v, f"every entry of {name}") for v in values)


def _check_grid(channels: int, grid, neighborhood) -> tuple[tuple, tuple]:
    """``grid`` ``(d_1, …, d_s)`` with ``∏ d_r = channels``; ``neighborhood`` ``(t_1, …, t_s)``
    with ``1 <= t_r <= d_r`` (a larger ``t_r`` would wrap around and read one input twice)."""
    grid = _int_tuple(grid, "grid")
    neighborhood = _int_tuple(neighborhood, "neighborhood")
    if math.prod(grid) != channels:
        raise ValueError(
            f"grid={grid} holds {math.prod(grid)} channels but channels={channels}; "
            "the product of the grid's sizes must equal the number of channels"
        )
    if len(neighborhood) != len(grid):
        raise ValueError(
            f"neighborhood={neighborhood} has {len(neighborhood)} dimensions but grid={grid} has "
            f"{len(grid)}; give one neighbourhood size per grid dimension"
        )
    for r, (t, d) in enumerate(zip(neighborhood, grid)):
        if t > d:
            raise ValueError(
                f"neighborhood[{r}]={t} is larger than grid[{r}]={d}; each t_r must be <= d_r "
                "(circular indexing would read the same input channel twice)"
            )
    return grid, neighborhood


# ----------------------------------------------------------------------------- eqs. (3)-(6)
class UnravelledConv2d(nn.Module):
    """Eqs. (3)–(6): ``b`` basis filters per input channel, then a linear channel projection.

    - ``intra`` = ``nn.Conv2d(c, c·b, k, padding=k // 2, groups=c, bias=False)``: eq. (4).
      Its output channel ``i·b + t`` is ``J(:, :, t, i)``, input ``i`` convolved with basis
      ``B(:, :, t, i)`` = ``intra.weight[i·b + t, 0]``.
    - ``proj`` = ``nn.Conv2d(c·b, n, 1, bias=bias)``: eq. (5), ``P(t, i, j)`` =
      ``proj.weight[j, i·b + t, 0, 0]``.

    Cost: eq. (6), :func:`unravelled_macs`. Parameters ``b c k² + b c n`` (``+ n`` with a bias).
    ``backend``: ``"reference"`` runs the two convolutions; ``"triton"`` one fused kernel that
    computes eq. (4) as the prologue of eq. (5)'s GEMM (:mod:`effconv_ref.ops.intra_pointwise`;
    float32, float16, bfloat16); ``"auto"`` as :mod:`effconv_ref.backend` says.
    """

    __prepare_scriptable__ = refuse_torchscript

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bases: int,
                 bias: bool = False, backend: str = "auto", device=None, dtype=None):
        super().__init__()
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.out_channels = _positive_int(out_channels, "out_channels")
        self.kernel_size = check_kernel_size(kernel_size)
        self.bases = _positive_int(bases, "bases")
        self.backend = check_backend(backend, BACKENDS)
        factory = dict(device=device, dtype=dtype)
        c, b, k = in_channels, bases, kernel_size
        self.intra = nn.Conv2d(c, c * b, k, padding=k // 2, groups=c, bias=False, **factory)
        self.proj = nn.Conv2d(c * b, out_channels, 1, bias=bias, **factory)

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, bases={self.bases}"
        return text + (f", backend={self.backend!r}" if self.backend != "auto" else "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, argument="in_channels")
        check_dtype(x, self.intra.weight)
        fused = _fused(self.backend, x, self.intra, self.proj, residual=False)
        return fused if fused is not None else self.proj(self.intra(x))  # eq. (5) of eq. (4)

    def dense_weight(self) -> torch.Tensor:
        """Eq. (3): ``K(u, v, i, j) = Σ_t B(u, v, t, i) P(t, i, j)``, as ``(n, c, k, k)``."""
        c, b, k = self.in_channels, self.bases, self.kernel_size
        B = self.intra.weight.reshape(c, b, k, k)  # B[i, t] = B(:, :, t, i)
        P = self.proj.weight.reshape(self.out_channels, c, b)  # P[j, i, t] = P(t, i, j)
        return torch.einsum("jit,ituv->jiuv", P, B)


# ----------------------------------------------------------------------------- eq. (8)
def neighborhood_indices(grid: Sequence[int], neighborhood: Sequence[int], device=None) -> torch.Tensor:
    """Eq. (8)'s connections: a ``(n, ∏ t)`` LongTensor whose row ``j`` lists the input channels
    output channel ``j`` reads, ``(j_r + i_r) mod d_r`` for ``0 <= i_r < t_r``.

    Channels are numbered row-major on the grid (``j = j_1 d_2 ⋯ d_s + … + j_s``) and so are the
    offsets ``(i_1, …, i_s)`` along a row. Example: ``grid=(4,)``, ``neighborhood=(2,)`` gives
    ``[[0, 1], [1, 2], [2, 3], [3, 0]]``.
    """
    grid, neighborhood = tuple(grid), tuple(neighborhood)

    def cells(sizes):  # every multi-index of a grid of these sizes, row-major: (∏ sizes, s)
        axes = torch.meshgrid(*[torch.arange(d, device=device) for d in sizes], indexing="ij")
        return torch.stack(axes, dim=-1).reshape(-1, len(sizes))

    d = torch.tensor(grid, device=device)
    j, i = cells(grid), cells(neighborhood)
    read = (j[:, None, :] + i[None, :, :]) % d  # (n, ∏t, s): the grid cell each connection reads
    row_major = torch.tensor([math.prod(grid[r + 1:]) for r in range(len(grid))], device=device)
    return (read * row_major).sum(-1)


class TpSConv2d(nn.Module):
    """Topological subdivisioning, eq. (8): a ``k x k`` convolution, ``n -> n`` channels, in which
    output channel ``j`` reads only its ``∏ t_r`` neighbours on the channel grid.

    - ``grid`` ``(d_1, …, d_s)``, ``∏ d_r = channels``: channels laid out row-major.
    - ``neighborhood`` ``(t_1, …, t_s)``, ``1 <= t_r <= d_r``: output ``(j_1, …, j_s)`` reads
      inputs ``((j_r + i_r) mod d_r)_r``, ``0 <= i_r < t_r`` — the paper's forward, circular
      window (it starts at ``j``; it is not centred on it).
    - ``weight`` ``(n, ∏ t, k, k)``: only the connected filters; ``weight[j, m]`` is the filter
      from input ``neighbors[j, m]`` to output ``j`` (``m`` row-major over the offsets).
    - ``density`` ``∏ t_r / n``: the fraction of a standard convolution's cost and parameters.

    ``backend``: ``"reference"`` computes eq. (8) as written, a sum over the offsets ``i`` of the
    channel grid rolled by ``i`` and convolved channel by channel; ``"gather"`` gathers every
    output's neighbours into one ``(B, n·∏t, H, W)`` tensor and runs one grouped convolution
    (``groups=n``; cuDNN on a GPU); ``"auto"`` takes ``"gather"``. Both are exact.
    """

    __prepare_scriptable__ = refuse_torchscript

    def __init__(self, channels: int, kernel_size: int, grid: Sequence[int], neighborhood: Sequence[int],
                 bias: bool = False, backend: str = "auto", device=None, dtype=None):
        super().__init__()
        self.channels = self.in_channels = self.out_channels = check_channels(channels)
        self.kernel_size = check_kernel_size(kernel_size)
        self.grid, self.neighborhood = _check_grid(channels, grid, neighborhood)
        if backend not in TPS_BACKENDS:
            raise ValueError(f"backend={backend!r} is not a backend; choose one of {', '.join(TPS_BACKENDS)}")
        self.backend = backend
        connections = math.prod(self.neighborhood)
        factory = dict(device=device, dtype=dtype)
        self.register_buffer(
            "neighbors", neighborhood_indices(self.grid, self.neighborhood, device=device), persistent=False
        )
        self.weight = nn.Parameter(torch.empty(channels, connections, kernel_size, kernel_size, **factory))
        self.bias = nn.Parameter(torch.empty(channels, **factory)) if bias else None
        self.reset_parameters()

    @property
    def density(self) -> float:
        """``∏ t_r / n``: the fraction of the input channels each output reads."""
        return math.prod(self.neighborhood) / self.channels

    def reset_parameters(self) -> None:
        # as torch.nn.Conv2d, with the fan-in an output really has: ∏t inputs times k² taps
        fan_in = self.weight.shape[1] * self.kernel_size ** 2
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            nn.init.uniform_(self.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def extra_repr(self) -> str:
        text = f"{self.channels}, kernel_size={self.kernel_size}, grid={self.grid}, neighborhood={self.neighborhood}"
        if self.bias is None:
            text += ", bias=False"
        return text + (f", backend={self.backend!r}" if self.backend != "auto" else "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.channels)
        check_dtype(x, self.weight)
        if self.backend == "reference":
            return self._eq8(x)
        return self._gather(x)

    def _eq8(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. (8): ``O(j) = Σ_i K(i, j) ⋆ I((j + i) mod d)``, one depth-wise convolution per offset ``i``."""
        batch, n, height, width = x.shape
        on_grid = x.reshape(batch, *self.grid, height, width)
        grid_dims = tuple(range(1, 1 + len(self.grid)))
        offsets = torch.cartesian_prod(*[torch.arange(t) for t in self.neighborhood]).reshape(-1, len(self.grid))
        out = 0
        for m, offset in enumerate(offsets.tolist()):
            # rolled[j] = x[(j + offset) mod d]: rolling by -offset brings input j + i to place j
            rolled = torch.roll(on_grid, shifts=[-i for i in offset], dims=grid_dims).reshape(batch, n, height, width)
            out = out + F.conv2d(rolled, self.weight[:, m:m + 1], padding=self.kernel_size // 2, groups=n)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype).reshape(1, n, 1, 1)  # autocast: the convolutions' dtype
        return out

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        """Gather each output's ``∏t`` inputs side by side, then one grouped convolution."""
        gathered = x[:, self.neighbors.reshape(-1)]  # (B, n·∏t, H, W): block j = the inputs of output j
        return F.conv2d(gathered, self.weight, self.bias, padding=self.kernel_size // 2, groups=self.channels)

    def dense_weight(self) -> torch.Tensor:
        """The ``(n, n, k, k)`` weight of the standard convolution eq. (8) is: zero except at the
        ``∏ t`` neighbours of each output."""
        n, k = self.channels, self.kernel_size
        dense = self.weight.new_zeros(n, n, k, k)
        rows = torch.arange(n, device=self.neighbors.device)[:, None].expand_as(self.neighbors)
        return dense.index_put((rows, self.neighbors), self.weight)


# ----------------------------------------------------------------------------- section 2.2
class SICConv2d(nn.Module):
    """A single intra-channel convolutional (SIC) layer, section 2.2.3 and Figure 1(b):
    ``proj(intra(x)) + x``.

    - ``intra`` = ``nn.Conv2d(c, c, k, padding=k // 2, groups=c, bias=False)``: one ``k x k``
      filter per channel (eq. 4 with ``b = 1``).
    - ``proj``: the linear channel projection, ``nn.Conv2d(c, n, 1, bias=bias)``; or, when
      ``grid`` and ``neighborhood`` are given, a :class:`TpSConv2d` with ``kernel_size=1``
      (section 3.2, "SIC layer with topological subdivisioning"; needs ``n = c``).
    - the residual "from the input of 2D intra-channel convolution to the output of linear
      projection": added when ``residual`` is true and ``n = c`` (a channel-changing layer
      such as the first of a bottleneck pair has none; ``self.residual`` says which).

    ``n = out_channels`` (default ``channels``). Cost: eq. (7), :func:`sic_macs` (with TpS the
    projection's share times its density). :meth:`dense_weight` includes the residual as an
    identity at the centre tap. ``backend``: ``"reference"`` (two ``nn.Conv2d`` and an add),
    ``"triton"`` (one fused kernel: the intra-channel convolution as the prologue of the 1x1
    GEMM, the residual as its epilogue; not with a TpS projection) or ``"auto"``.
    """

    __prepare_scriptable__ = refuse_torchscript

    def __init__(self, channels: int, kernel_size: int, out_channels: int | None = None,
                 residual: bool = True, bias: bool = False, grid: Sequence[int] | None = None,
                 neighborhood: Sequence[int] | None = None, backend: str = "auto", device=None, dtype=None):
        super().__init__()
        self.channels = self.in_channels = check_channels(channels)
        self.out_channels = channels if out_channels is None else _positive_int(out_channels, "out_channels")
        self.kernel_size = k = check_kernel_size(kernel_size)
        self.residual = bool(residual) and self.out_channels == channels
        self.backend = check_backend(backend, BACKENDS)
        if backend == "triton" and grid is not None:
            raise ValueError("backend='triton' fuses a 1x1 projection; a TpS projection (grid=, "
                             "neighborhood=) runs on backend='auto' or 'reference'")
        factory = dict(device=device, dtype=dtype)
        self.intra = nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels, bias=False, **factory)
        if (grid is None) != (neighborhood is None):
            raise ValueError("grid and neighborhood go together: give both (a TpS projection) or neither")
        if grid is None:
            self.proj = nn.Conv2d(channels, self.out_channels, 1, bias=bias, **factory)
        else:
            if self.out_channels != channels:
                raise ValueError(
                    f"a TpS projection maps n channels to n; out_channels={self.out_channels} "
                    f"must equal channels={channels} when grid is given"
                )
            self.proj = TpSConv2d(channels, 1, grid, neighborhood, bias=bias, **factory)

    def extra_repr(self) -> str:
        text = f"{self.channels}, kernel_size={self.kernel_size}"
        if self.out_channels != self.channels:
            text += f", out_channels={self.out_channels}"
        text += f", residual={self.residual}"
        return text + (f", backend={self.backend!r}" if self.backend != "auto" else "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.channels)
        check_dtype(x, self.intra.weight)
        if isinstance(self.proj, nn.Conv2d):
            fused = _fused(self.backend, x, self.intra, self.proj, self.residual)
            if fused is not None:
                return fused
        y = self.proj(self.intra(x))
        return y + x if self.residual else y

    def dense_weight(self) -> torch.Tensor:
        """``K(u, v, i, j) = P(i, j) B(u, v, i)`` (eq. 3 with ``b = 1``), plus the identity at the
        centre tap when there is a residual: ``(n, c, k, k)``."""
        k = self.kernel_size
        if isinstance(self.proj, TpSConv2d):
            P = self.proj.dense_weight()[:, :, 0, 0]
        else:
            P = self.proj.weight[:, :, 0, 0]  # (n, c)
        B = self.intra.weight[:, 0]  # (c, k, k)
        dense = P[:, :, None, None] * B[None]
        if self.residual:
            centre = torch.zeros_like(dense)
            centre[:, :, k // 2, k // 2] = torch.eye(self.channels, dtype=dense.dtype, device=dense.device)
            dense = dense + centre
        return dense
