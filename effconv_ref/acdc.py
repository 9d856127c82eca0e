"""ACDC layers (Moczulski et al., 2016) and the structured efficient convolutional layer
(SECL) of eq. (2) of "Training Structured Efficient Convolutional Layers".

Column convention throughout, as ``nn.Linear``: a layer maps ``x`` to ``y = W x + b``.

- ``ACDC(n)``: ``W = Tᵀ diag(D) T diag(A)`` with ``T`` the orthonormal DCT-II matrix
  (:func:`dct_matrix`), so ``T⁻¹ = Tᵀ``: scale by ``A``, DCT-II, scale by ``D``, inverse DCT.
- The riffle ``P`` (:func:`riffle_permutation`): a perfect out-shuffle, ``y[j] = x[π(j)]``
  with ``π = [0, h, 1, h + 1, …]``, ``h = ceil(n / 2)``.
- ``ACDCStack(n, depth)``: eq. (2) read in the column convention,
  ``y = P f_L(… P f_1(x))``, a riffle after every layer, no nonlinearity in between.
- ``ACDCConv2d(in, out, k)``: a depth-wise ``k x k`` convolution, the channels tiled
  ``out // in`` times, then the stack at every pixel (section 3 of the paper).

Two exact paths compute a stack (``backend=``): ``"dct"``, the fast DCT through
``torch.fft`` (Makhoul's reordering, ``O(n log n)`` per layer), and ``"dense"``, the stack
multiplied out once per call into one ``n x n`` matrix (for a convolution, one 1x1
convolution). ``"auto"`` takes whichever the paper's cost model says is cheaper
(:func:`choose_backend`): "the implementation of layers would depend on which would be
cheaper".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from effconv_ref.checks import check_input

__all__ = [
    "BACKENDS",
    "DEPTHWISE",
    "ACDC",
    "ACDCStack",
    "ACDCConv2d",
    "ACDCDepthwise2d",
    "dct_matrix",
    "dct",
    "idct",
    "riffle_permutation",
    "acdc_macs",
    "stack_macs",
    "choose_backend",
]

BACKENDS = ("auto", "dct", "dense")
DEPTHWISE = ("full", "acdc")


# --------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int (>= 1); got {value}")
    return value


def _check_backend(backend) -> str:
    if backend not in BACKENDS:
        raise ValueError(
            f"backend={backend!r} is not a backend; choose one of {', '.join(BACKENDS)}"
        )
    return backend


def _check_last_dim(x, n: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor; got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"input must be a real floating tensor; got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] != n:
        raise ValueError(
            f"input's last dimension must be n={n} (shape (..., {n})); "
            f"got shape {tuple(x.shape)}"
        )


# --------------------------------------------------------------------------------------
# the DCT, two ways
# --------------------------------------------------------------------------------------


def dct_matrix(n: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``T`` (``n x n``), ``T Tᵀ = I``:

    ``T[k, j] = s_k cos(π (2j + 1) k / (2n))``, ``s_0 = sqrt(1/n)``, ``s_k = sqrt(2/n)``.

    Built in float64 and then cast, so a float64 module gets a float64 DCT.
    """
    _positive_int(n, "n")
    k = torch.arange(n, dtype=torch.float64, device=device)[:, None]
    j = torch.arange(n, dtype=torch.float64, device=device)[None, :]
    T = torch.cos(math.pi * (2 * j + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    T[0] /= math.sqrt(2.0)
    return T.to(dtype)


def _fft_dtype(x: torch.Tensor) -> torch.dtype:
    # torch.fft runs in float32/float64; half precision is computed in float32
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def _twiddle(n: int, sign: float, dtype, device) -> torch.Tensor:
    """``exp(sign · iπk / (2n))`` times the orthonormal scale ``s_k`` (k = 0 … n-1)."""
    k = torch.arange(n, dtype=torch.float64, device=device)
    scale = torch.full((n,), math.sqrt(2.0 / n), dtype=torch.float64, device=device)
    scale[0] = math.sqrt(1.0 / n)
    w = torch.polar(scale, sign * math.pi * k / (2 * n))
    return w.to(torch.complex128 if dtype == torch.float64 else torch.complex64)


def dct(x: torch.Tensor) -> torch.Tensor:
    """``T x`` along the last dimension (orthonormal DCT-II), in ``O(n log n)``.

    Makhoul (1980): reorder ``v = [x_0, x_2, x_4, …, x_5, x_3, x_1]`` (the even entries,
    then the odd ones backwards); then ``(T x)_k = s_k Re(exp(-iπk/(2n)) V_k)`` with
    ``V = FFT(v)``, one FFT of length ``n``.
    """
    n = x.shape[-1]
    dtype = x.dtype
    x = x.to(_fft_dtype(x))
    v = torch.cat([x[..., ::2], x[..., 1::2].flip(-1)], dim=-1)
    V = torch.fft.fft(v, dim=-1)
    X = (V * _twiddle(n, -1.0, x.dtype, x.device)).real
    return X.to(dtype)


def idct(X: torch.Tensor) -> torch.Tensor:
    """``Tᵀ X`` along the last dimension (the inverse of :func:`dct`), in ``O(n log n)``.

    With ``X_n = 0`` and ``c_k = X_k / s_k``: ``V_k = exp(iπk/(2n)) (c_k − i c_{n−k})``
    for ``k = 0 … n/2`` (``V`` is Hermitian: ``v`` is real), ``v = IFFT(V)``, and the
    reordering of :func:`dct` undone.
    """
    n = X.shape[-1]
    dtype = X.dtype
    X = X.to(_fft_dtype(X))
    w = _twiddle(n, 1.0, X.dtype, X.device)
    half = n // 2 + 1
    c = X / w.abs()  # undo the orthonormal scale: c_k = X_k / s_k
    c_reflected = torch.cat([torch.zeros_like(c[..., :1]), c[..., 1:].flip(-1)], -1)
    V = (w / w.abs())[:half] * torch.complex(c[..., :half], -c_reflected[..., :half])
    v = torch.fft.irfft(V, n=n, dim=-1)
    x = torch.empty_like(v)
    h = (n + 1) // 2
    x[..., ::2] = v[..., :h]
    x[..., 1::2] = v[..., h:].flip(-1)
    return x.to(dtype)


# --------------------------------------------------------------------------------------
# the riffle and the cost model
# --------------------------------------------------------------------------------------


def riffle_permutation(n: int, device=None) -> torch.Tensor:
    """The perfect out-shuffle ``π``: ``y[j] = x[π(j)]``, ``π = [0, h, 1, h + 1, …]``,
    ``h = ceil(n / 2)`` (n = 8: ``[0, 4, 1, 5, 2, 6, 3, 7]``). Cut the deck in half, the
    first half one card longer when ``n`` is odd, and interleave, the top card staying on top.
    """
    _positive_int(n, "n")
    h = (n + 1) // 2
    return torch.tensor(
        [j // 2 if j % 2 == 0 else h + j // 2 for j in range(n)], device=device
    )


def acdc_macs(n: int) -> float:
    """The paper's cost of one ACDC layer at test time: ``4n + 5n log2 n`` multiply-adds."""
    return 4 * n + 5 * n * math.log2(n)


def stack_macs(n: int, depth: int) -> float:
    """The paper's cost model for a stack of ``depth`` ACDC layers: ``depth · acdc_macs(n)``."""
    return depth * acdc_macs(n)


def choose_backend(n: int, depth: int, in_features: int | None = None) -> str:
    """The paper's rule, "whichever would be cheaper": ``"dense"`` when the multiplied-out
    ``n x in_features`` matrix costs no more than the stack, ``in_features · n <=
    depth (4n + 5n log2 n)``, else ``"dct"``. For 12 square layers the crossover is n ≈ 600."""
    in_features = n if in_features is None else in_features
    return "dense" if in_features * n <= stack_macs(n, depth) else "dct"


# --------------------------------------------------------------------------------------
# the modules
# --------------------------------------------------------------------------------------


class ACDC(nn.Module):
    """One ACDC layer, ``y = Tᵀ diag(D) T diag(A) x + bias`` on the last dimension of ``x``.

    ``A`` and ``D`` ``(n,)`` are initialised ``N(1, 0.01²)`` as Moczulski et al.; ``bias``
    ``(n,)`` (zeros at initialisation) or ``None``.
    """

    def __init__(self, n: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.n = _positive_int(n, "n")
        factory = dict(device=device, dtype=dtype)
        self.A = nn.Parameter(torch.empty(n, **factory))
        self.D = nn.Parameter(torch.empty(n, **factory))
        self.bias = nn.Parameter(torch.empty(n, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.A, 1.0, 0.01)
        nn.init.normal_(self.D, 1.0, 0.01)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return f"{self.n}, bias={self.bias is not None}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_last_dim(x, self.n)
        y = idct(self.D * dct(self.A * x))
        return y if self.bias is None else y + self.bias

    def dense_weight(self) -> torch.Tensor:
        """``W = Tᵀ diag(D) T diag(A)``, ``(n, n)``."""
        T = dct_matrix(self.n, self.A.dtype, self.A.device)
        return T.T @ (self.D[:, None] * T * self.A[None, :])


def _check_permutation(riffle, n: int):
    """``riffle``: ``True`` (the riffle), ``False`` (none) or a permutation of ``range(n)``."""
    if isinstance(riffle, bool):
        return riffle_permutation(n) if riffle else None
    if isinstance(riffle, torch.Tensor):
        perm = riffle.detach().to("cpu")
        if (
            perm.dim() != 1
            or perm.dtype not in (torch.int32, torch.int64)
            or not torch.equal(perm.sort().values, torch.arange(n, dtype=perm.dtype))
        ):
            raise ValueError(
                f"riffle as a tensor must be a permutation of range({n}) (1-D, integer); "
                f"got shape {tuple(riffle.shape)}, dtype {riffle.dtype}"
            )
        return perm.long()
    raise TypeError(
        "riffle must be True (the riffle shuffle), False (no permutation) or a 1-D "
        f"integer permutation tensor; got {type(riffle).__name__}"
    )


class ACDCStack(nn.Module):
    """Eq. (2) in the column convention: ``y = P f_L(… P f_1(x))``, ``f_l`` an :class:`ACDC`.

    ``riffle``: ``True`` for the riffle shuffle after every layer (the last one included),
    ``False`` for none, or a fixed permutation tensor ``π`` (``y[j] = x[π(j)]``) to use
    instead. ``bias``: a bias in every layer. ``backend``: ``"dct"`` (the fast DCT),
    ``"dense"`` (``x @ dense_weight()ᵀ``, the stack multiplied out once per call) or
    ``"auto"`` (:func:`choose_backend`).
    """

    def __init__(self, n: int, depth: int, riffle=True, bias: bool = False,
                 backend: str = "auto", device=None, dtype=None):
        super().__init__()
        self.n = _positive_int(n, "n")
        self.depth = _positive_int(depth, "depth")
        self.backend = _check_backend(backend)
        perm = _check_permutation(riffle, n)
        self.riffle = riffle if isinstance(riffle, bool) else "fixed permutation"
        self.layers = nn.ModuleList(
            ACDC(n, bias=bias, device=device, dtype=dtype) for _ in range(depth)
        )
        self.register_buffer("perm", None if perm is None else perm.to(device))

    def reset_parameters(self) -> None:
        for layer in self.layers:
            layer.reset_parameters()

    def extra_repr(self) -> str:
        text = f"{self.n}, depth={self.depth}, riffle={self.riffle!r}"
        return text + (f", backend={self.backend!r}" if self.backend != "auto" else "")

    def path(self, in_features: int | None = None) -> str:
        """The path ``forward`` takes: ``"dct"`` or ``"dense"``."""
        if self.backend != "auto":
            return self.backend
        return choose_backend(self.n, self.depth, in_features)

    def permutation_matrix(self) -> torch.Tensor:
        """``P`` with ``(P x)[j] = x[π(j)]``: row ``j`` of ``P`` is ``e_{π(j)}``."""
        eye = torch.eye(self.n, dtype=self.layers[0].A.dtype, device=self.layers[0].A.device)
        return eye if self.perm is None else eye[self.perm]

    def dense_weight(self) -> torch.Tensor:
        """``W = P W_L ⋯ P W_1``, ``(n, n)``, with ``W_l`` each layer's ``Tᵀ diag(D) T diag(A)``."""
        W = None
        for layer in self.layers:
            W_l = layer.dense_weight()
            W = W_l if W is None else W_l @ W
            if self.perm is not None:
                W = W[self.perm]
        return W

    def multiplied_out(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(W, c)`` with ``stack(x) = W x + c``, computed by the fast path: ``c`` is the
        stack applied to ``0`` and column ``j`` of ``W`` the stack applied to ``e_j``
        (minus ``c``). ``depth · n`` transforms of length ``n``, ``O(depth n² log n)``,
        against the ``O(depth n³)`` of multiplying the ``n x n`` factors; ``c`` is
        ``None`` without biases. This is what the ``"dense"`` path runs once per call."""
        A = self.layers[0].A
        inputs = torch.cat([A.new_zeros(1, self.n), torch.eye(self.n, dtype=A.dtype,
                                                              device=A.device)])
        rows = self._dct_path(inputs)
        c = rows[0]
        W = (rows[1:] - c).T
        return W, (None if self.layers[0].bias is None else c)

    def _dct_path(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
            if self.perm is not None:
                x = x[..., self.perm]
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_last_dim(x, self.n)
        if self.path() == "dct":
            return self._dct_path(x)
        W, c = self.multiplied_out()
        return F.linear(x, W.to(x.dtype), None if c is None else c.to(x.dtype))


class ACDCDepthwise2d(nn.Module):
    """The low-rank depth-wise convolution (``depthwise="acdc"``): channel ``c``'s ``k x k``
    filter is one ACDC matrix ``Tᵀ diag(D_c) T diag(A_c)`` (``2k`` parameters, not ``k²``).

    ``A``, ``D``: ``(channels, k)``, initialised ``N(1, 0.01²)``. The filter's rows are the
    kernel's rows (height), its columns the kernel's columns (width).
    """

    def __init__(self, channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 device=None, dtype=None):
        super().__init__()
        self.channels = _positive_int(channels, "channels")
        self.kernel_size = _positive_int(kernel_size, "kernel_size")
        self.stride, self.padding = stride, padding
        factory = dict(device=device, dtype=dtype)
        self.A = nn.Parameter(torch.empty(channels, kernel_size, **factory))
        self.D = nn.Parameter(torch.empty(channels, kernel_size, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.A, 1.0, 0.01)
        nn.init.normal_(self.D, 1.0, 0.01)

    def extra_repr(self) -> str:
        return (f"{self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}")

    @property
    def weight(self) -> torch.Tensor:
        """The ``(channels, 1, k, k)`` depth-wise weight: ``Tᵀ diag(D_c) T diag(A_c)`` per channel."""
        T = dct_matrix(self.kernel_size, self.A.dtype, self.A.device)
        filters = T.T @ (self.D[:, :, None] * T * self.A[:, None, :])
        return filters[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, stride=self.stride, padding=self.padding,
                        groups=self.channels)


class ACDCConv2d(nn.Module):
    """A structured efficient convolutional layer (SECL), ``in -> out`` channels:

    1. ``depthwise``: a depth-wise ``k x k`` convolution, ``nn.Conv2d(in, in, k, stride,
       padding, groups=in, bias=False)`` (``depthwise="full"``) or the low-rank
       :class:`ACDCDepthwise2d` (``depthwise="acdc"``); ``None`` when ``k = 1`` (then
       ``stride`` and ``padding`` act as a 1x1 convolution's: pad, then subsample);
    2. the channels tiled ``out // in`` times (``x.repeat``; ``out`` must be a multiple of
       ``in``), so the pointwise matrix is square;
    3. ``acdc``: :class:`ACDCStack` ``(out, depth, riffle)`` at every pixel;
    4. ``bias`` ``(out,)`` or ``None``.

    ``backend``: ``"dct"`` runs the stack with the fast DCT on a channels-last view;
    ``"dense"`` multiplies the stack and the tiling out into one ``(out, in)`` matrix and
    applies it as one 1x1 convolution; ``"auto"`` picks by :func:`choose_backend`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 stride: int = 1, padding: int = 0, depth: int = 12, riffle=True,
                 bias: bool = False, depthwise: str = "full", backend: str = "auto",
                 device=None, dtype=None):
        super().__init__()
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.out_channels = _positive_int(out_channels, "out_channels")
        self.kernel_size = _positive_int(kernel_size, "kernel_size")
        self.stride = _positive_int(stride, "stride")
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"padding must be a non-negative int; got {padding!r}")
        self.padding = padding
        if out_channels % in_channels:
            raise ValueError(
                f"out_channels={out_channels} must be a multiple of in_channels="
                f"{in_channels}: the input is tiled out_channels // in_channels times"
            )
        if depthwise not in DEPTHWISE:
            raise ValueError(
                f"depthwise={depthwise!r}; choose one of {', '.join(DEPTHWISE)}"
            )
        self.depthwise_kind = depthwise
        self.repeats = out_channels // in_channels
        factory = dict(device=device, dtype=dtype)
        if kernel_size == 1:
            self.depthwise = None
        elif depthwise == "full":
            self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, stride,
                                       padding, groups=in_channels, bias=False, **factory)
        else:
            self.depthwise = ACDCDepthwise2d(in_channels, kernel_size, stride, padding,
                                             **factory)
        self.acdc = ACDCStack(out_channels, depth, riffle, bias=False, backend=backend,
                              **factory)
        self.bias = nn.Parameter(torch.zeros(out_channels, **factory)) if bias else None

    def reset_parameters(self) -> None:
        if self.depthwise is not None:
            self.depthwise.reset_parameters()
        self.acdc.reset_parameters()
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")
        if self.depthwise_kind != "full":
            text += f", depthwise={self.depthwise_kind!r}"
        return text + ("" if self.bias is None else ", bias=True")

    def path(self) -> str:
        """The path ``forward`` takes for the stack: ``"dct"`` or ``"dense"``."""
        return self.acdc.path(self.in_channels)

    def _spatial(self, x: torch.Tensor) -> torch.Tensor:
        if self.depthwise is not None:
            return self.depthwise(x)
        p, s = self.padding, self.stride
        return F.pad(x, (p, p, p, p))[:, :, ::s, ::s]

    def tiling_matrix(self) -> torch.Tensor:
        """``R`` ``(out, in)``: ``x.repeat`` as a matrix, ``R[j, j mod in] = 1``."""
        A = self.acdc.layers[0].A
        eye = torch.eye(self.in_channels, dtype=A.dtype, device=A.device)
        return eye.repeat(self.repeats, 1)

    def pointwise_weight(self) -> torch.Tensor:
        """The 1x1 part multiplied out, ``W_stack R``, ``(out, in)``."""
        return self.acdc.dense_weight() @ self.tiling_matrix()

    def dense_weight(self) -> torch.Tensor:
        """The equivalent ``(out, in, k, k)`` weight: ``(W_stack R)[o, i] · w_i``, with
        ``w_i`` channel ``i``'s depth-wise filter (``1`` when ``k = 1``)."""
        M = self.pointwise_weight()
        if self.depthwise is None:
            return M[:, :, None, None]
        return M[:, :, None, None] * self.depthwise.weight[None, :, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, argument="in_channels")
        h = self._spatial(x)
        if self.path() == "dense":
            # the stack multiplied out (by its fast path) and the tiling folded in: W R
            W, _ = self.acdc.multiplied_out()
            weight = (W @ self.tiling_matrix()).to(h.dtype)[:, :, None, None]
            return F.conv2d(h, weight, None if self.bias is None else self.bias.to(h.dtype))
        h = h.repeat(1, self.repeats, 1, 1) if self.repeats > 1 else h
        y = self.acdc(h.movedim(1, -1)).movedim(-1, 1)
        return y if self.bias is None else y + self.bias[:, None, None]
