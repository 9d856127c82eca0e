"""Residual steps of Treister et al., "Low-Cost Parameterizations of Deep Convolutional
Neural Networks": one "time step" ``y_{j+1} = y_j + F(θ_j, y_j)`` (eq. 1) for each way
the paper parameterizes the convolution.

Every step maps a ``(N, C, H, W)`` feature map to one of the same shape. The submodules
carry the paper's names:

- ``depthwise``: K_dw of eq. 5 (one stencil per channel), or K_circ of eq. 12,
- ``pointwise``: M of eq. 6 (a 1x1 convolution without bias),
- ``norm``: the normalisation N (``BatchNorm2d``),
- ``h``: the time step of eqs. 9 and 11 (a float, not trained).

The steps:

- ``ResNetStep``: ``y + K2ᵀ σ(N(K1 y))`` (eqs. 1-3),
- ``MobileNetStep``: ``σ(N2(M σ(N1(K_dw y))))`` (eq. 13),
- ``LinearMixStep``: eq. 3 with ``K = K_dw + M`` (eqs. 3, 7),
- ``ExplicitRDStep``: ``y + h(−K_dwᵀ K_dw y + σ(N(M y)))`` (eq. 9),
- ``ImplicitRDStep``: ``(I + h K_dwᵀ K_dw)⁻¹ (y + h σ(N(M y)))`` (eq. 11),
- ``CirculantRDStep``: eq. 9 with K_circ of eq. 12 in place of K_dw.

The three reaction-diffusion (RD) steps discretise the same PDE (eq. 8),
``∂_t y = −Kᵀ K y + σ(N(M y))``, and default to periodic boundaries, so that the explicit
step (eq. 9) and the FFT-based implicit step (eq. 11) really are two time discretisations
of one operator (the FFT solve needs periodic boundaries).

**The time step h.** The paper says only that "the time step h > 0 is chosen sufficiently
small" and gives no value. The default here is ``DEFAULT_H = 0.1``: the forward-Euler
diffusion part ``I − h K_dwᵀ K_dw`` is stable when ``h ρ(K_dwᵀ K_dw) ≤ 2``, and
``ρ(K_dwᵀ K_dw) = max_ω |k̂(ω)|² ≤ (Σ|w|)²``, which for a 3x3 stencil with entries in
PyTorch's default range ``|w| ≤ 1/3`` is at most 9, so ``h ≤ 2/9`` keeps every freshly
initialised explicit step stable. The same h is used for all three RD steps so that they
stay comparable; the implicit step is stable for any ``h > 0``. Every RD step accepts
``0 < h <= MAX_H = 1e6``: a time step, not a limit to take. Far beyond it the product
``h σ(N(M y))`` overflows float32 (``h = 1e300`` is ``inf`` there) and the FFT turns that
``inf`` into ``nan``; 1e6 is five orders of magnitude past every ``h`` the book uses and leaves
``h σ(·)`` finite in float32 for activations up to 1e32. (float16 holds only up to 65504:
a step run in float16 overflows for much smaller ``h``; use autocast or bfloat16 there.)

**Outside the math**, shared by every step (the README's table "What each operator supports"
has the per-operator detail):

- dtypes: outside ``torch.autocast`` the input and the parameters share one dtype. The FFT
  parts (``ImplicitRDStep``'s solve, ``CirculantRDStep``'s K_circ) compute float16/bfloat16 in
  float32 and cast back, and compute in float32 under autocast.
- an empty batch (``N = 0``) returns an empty batch.
- non-finite input: in training mode ``BatchNorm2d``'s batch statistics turn one ``inf`` into
  ``nan`` for the whole batch. In evaluation mode it stays in its sample, and spreads within it
  as its operators do: a neighbourhood for the convolutions; whole channels for
  ``ImplicitRDStep`` (its own channel, and every channel whose reaction ``σ(N(M y))`` is ``+inf``
  there, since the FFT solve mixes every pixel of a channel); the whole sample for
  ``CirculantRDStep`` (the 3-D FFT).
- TorchScript is not supported (use ``torch.compile`` or ``torch.jit.trace``).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from effconv_ref.backend import check_backend
from effconv_ref.checks import check_dtype, check_input, refuse_torchscript
from effconv_ref.circulant import CirculantConv2d
from effconv_ref.depthwise import DepthwiseConv2d
from effconv_ref.linearmix import LinearMix
from effconv_ref.ops.implicit import implicit_solve

__all__ = [
    "DEFAULT_H",
    "MAX_H",
    "ResNetStep",
    "MobileNetStep",
    "LinearMixStep",
    "ExplicitRDStep",
    "ImplicitRDStep",
    "CirculantRDStep",
]

DEFAULT_H = 0.1
MAX_H = 1e6
BOUNDARIES = ("zeros", "periodic")


# --------------------------------------------------------------------------- checks

def _check_channels(channels) -> int:
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive integer, got {channels!r}")
    return channels


def _check_kernel_size(kernel_size) -> int:
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 \
            or kernel_size % 2 == 0:
        raise ValueError(
            f"kernel_size must be a positive odd integer (a centred stencil), got {kernel_size!r}"
        )
    return kernel_size


def _check_boundary(boundary) -> str:
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary={boundary!r}; choose one of {', '.join(BOUNDARIES)}")
    return boundary


def _check_h(h) -> float:
    if isinstance(h, bool) or not isinstance(h, (int, float)):
        raise ValueError(f"h (the time step) must be a positive number, got {h!r}")
    h = float(h)
    if not (h > 0 and math.isfinite(h)):
        raise ValueError(f"h (the time step) must be > 0 and finite, got h={h}")
    if h > MAX_H:
        raise ValueError(
            f"h (the time step) must be <= MAX_H = {MAX_H:g}, got h={h:g}; far larger steps "
            "overflow float32 in h σ(N(M y))"
        )
    return h


class _Step(nn.Module):
    """Shared input check: a 4-D ``(N, C, H, W)`` tensor with ``C == self.channels``."""

    channels: int
    __prepare_scriptable__ = refuse_torchscript

    def reset_parameters(self) -> None:
        """Re-initialise every operator and normalisation of the step."""
        for module in self.children():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def _check_input(self, y: torch.Tensor) -> None:
        check_input(y, self.channels)
        check_dtype(y, *self.parameters())


def _conv_adjoint(z: torch.Tensor, weight: torch.Tensor, boundary: str) -> torch.Tensor:
    """Kᵀ z for the stride-1, 'same'-size, fully coupled convolution K with ``weight`` (odd k).

    With zero boundaries the adjoint is the transposed convolution; with periodic ones it
    is the periodic cross-correlation with the flipped stencils and the channels swapped.
    """
    p = weight.shape[-1] // 2
    if boundary == "zeros":
        return F.conv_transpose2d(z, weight, padding=p)
    flipped = weight.flip(-2, -1).transpose(0, 1)
    return F.conv2d(F.pad(z, (p, p, p, p), mode="circular"), flipped)


# --------------------------------------------------------------------------- ResNet

class ResNetStep(_Step):
    """The plain ResNet step, eqs. 1-3: ``y + K(θ⁽²⁾)ᵀ σ(N(K(θ⁽¹⁾) y))``.

    Two fully coupled ``k x k`` convolutions ``conv1`` (K1 = K(θ⁽¹⁾)) and ``conv2``
    (K2 = K(θ⁽²⁾)), without bias, and one normalisation ``norm``. Read literally, eq. 3
    normalises only once, between K1 and the ReLU, and applies the *second* operator
    transposed: ``K2ᵀ`` is the adjoint of the convolution with ``conv2.weight`` (a
    transposed convolution, ``F.conv_transpose2d``), not a second forward convolution.
    The transpose does not change what the step can represent (``K2ᵀ`` is itself a
    convolution, with flipped stencils and swapped channels) nor its parameter count
    (``2 k² C² + 2C``), but it is the form whose Jacobian is symmetric when ``K1 = K2``,
    the form the PDE reading of the paper (Ruthotto & Haber) analyses. There is no
    normalisation after ``K2ᵀ`` and no ReLU after the sum.

    ``boundary="zeros"`` (the default, like a standard ResNet) or ``"periodic"``.
    """

    def __init__(self, channels: int, kernel_size: int = 3, boundary: str = "zeros") -> None:
        super().__init__()
        self.channels = _check_channels(channels)
        self.kernel_size = _check_kernel_size(kernel_size)
        self.boundary = _check_boundary(boundary)
        mode = "circular" if boundary == "periodic" else "zeros"
        conv = dict(padding=kernel_size // 2, padding_mode=mode, bias=False)
        self.conv1 = nn.Conv2d(channels, channels, kernel_size, **conv)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size, **conv)
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        self._check_input(y)
        z = F.relu(self.norm(self.conv1(y)))                               # σ(N(K1 y))
        return y + _conv_adjoint(z, self.conv2.weight, self.boundary)      # y + K2ᵀ z

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, boundary={self.boundary!r}"


# --------------------------------------------------------------------------- MobileNet

class MobileNetStep(_Step):
    """The MobileNet step of eq. 13: ``ỹ = σ(N1(K_dw y))``, ``y_{j+1} = σ(N2(M ỹ))``.

    A depth-wise ``k x k`` convolution ``depthwise`` (K_bd = K_dw, eq. 5), normalisation
    ``norm1`` and ReLU, then the 1x1 convolution ``pointwise`` (M, eq. 6), normalisation
    ``norm2`` and ReLU, as in Howard et al. (2017). Eq. 13 has no skip connection, so
    neither has this step: it is the paper's non-residual baseline. Parameters:
    ``k² C + C² + 4C``.
    """

    def __init__(self, channels: int, kernel_size: int = 3, boundary: str = "zeros") -> None:
        super().__init__()
        self.channels = _check_channels(channels)
        self.kernel_size = _check_kernel_size(kernel_size)
        self.boundary = _check_boundary(boundary)
        self.depthwise = DepthwiseConv2d(channels, kernel_size, boundary=boundary)
        self.norm1 = nn.BatchNorm2d(channels)
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(channels)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        self._check_input(y)
        y = F.relu(self.norm1(self.depthwise(y)))                          # σ(N(K_bd y_j))
        return F.relu(self.norm2(self.pointwise(y)))                       # σ(N(M ỹ))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, boundary={self.boundary!r}"


# --------------------------------------------------------------------------- LinearMix

class LinearMixStep(_Step):
    """A ResNet step (eqs. 1-3) whose two operators are LinearMix, eq. 7:
    ``y + K_lm2ᵀ σ(N(K_lm1 y))`` with ``K_lm = K_dw + M``.

    ``conv1`` and ``conv2`` are :class:`~effconv_ref.linearmix.LinearMix` operators
    (parameters ``depthwise`` and ``pointwise`` each); the transpose of the second,
    ``K_dwᵀ + Mᵀ``, is its ``adjoint``, applied without forming the dense weight.
    Parameters: ``2 (k² C + C²) + 2C``.
    """

    def __init__(self, channels: int, kernel_size: int = 3, boundary: str = "zeros") -> None:
        super().__init__()
        self.channels = _check_channels(channels)
        self.kernel_size = _check_kernel_size(kernel_size)
        self.boundary = _check_boundary(boundary)
        self.conv1 = LinearMix(channels, kernel_size, boundary=boundary)
        self.conv2 = LinearMix(channels, kernel_size, boundary=boundary)
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        self._check_input(y)
        z = F.relu(self.norm(self.conv1(y)))                               # σ(N(K_lm1 y))
        return y + self.conv2.adjoint(z)                                   # y + K_lm2ᵀ z

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, boundary={self.boundary!r}"


# --------------------------------------------------------------------------- reaction-diffusion

class _RDStep(_Step):
    """The reaction term ``σ(N(M y))`` shared by the three reaction-diffusion steps."""

    def _init_reaction(self, channels: int, h) -> None:
        self.h = _check_h(h)
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)      # M, eq. 6
        self.norm = nn.BatchNorm2d(channels)                                # N

    def reaction(self, y: torch.Tensor) -> torch.Tensor:
        """``σ(N(M y))``: the 1x1 reaction between channels at each pixel."""
        return F.relu(self.norm(self.pointwise(y)))

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, kernel_size={self.kernel_size}, h={self.h}, "
                f"boundary={self.boundary!r}")


class ExplicitRDStep(_RDStep):
    """The explicit reaction-diffusion step, eq. 9 (forward Euler on eq. 8):

        y_{j+1} = y_j + h (−K_dwᵀ K_dw y_j + σ(N(M y_j)))

    ``depthwise`` is K_dw (:class:`~effconv_ref.depthwise.DepthwiseConv2d`, periodic by
    default), ``pointwise`` is M, ``norm`` is N. Parameters: ``k² C + C² + 2C``.
    """

    def __init__(self, channels: int, kernel_size: int = 3, h: float = DEFAULT_H,
                 boundary: str = "periodic") -> None:
        super().__init__()
        self.channels = _check_channels(channels)
        self.kernel_size = _check_kernel_size(kernel_size)
        self.boundary = _check_boundary(boundary)
        self.depthwise = DepthwiseConv2d(channels, kernel_size, boundary=boundary)
        self._init_reaction(channels, h)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        self._check_input(y)
        diffusion = self.depthwise.adjoint(self.depthwise(y))              # K_dwᵀ K_dw y
        return y + self.h * (self.reaction(y) - diffusion)


class ImplicitRDStep(_RDStep):
    """The semi-implicit reaction-diffusion step, eq. 11:

        y_{j+1} = (I + h K_dwᵀ K_dw)⁻¹ (y_j + h σ(N(M y_j)))

    The reaction is explicit, the diffusion implicit; the solve is
    :func:`~effconv_ref.ops.implicit.implicit_solve`, which diagonalises the periodic
    depth-wise convolution with the 2-D FFT, so only ``boundary="periodic"`` is accepted.
    Parameters: ``k² C + C² + 2C``, as for the explicit step.
    """

    def __init__(self, channels: int, kernel_size: int = 3, h: float = DEFAULT_H,
                 boundary: str = "periodic", backend: str = "auto") -> None:
        super().__init__()
        self.channels = _check_channels(channels)
        self.kernel_size = _check_kernel_size(kernel_size)
        if boundary != "periodic":
            raise ValueError(
                f"boundary={boundary!r}: the implicit step solves (I + h K_dwᵀ K_dw) x = b with "
                "the FFT, which needs boundary='periodic'"
            )
        self.boundary = boundary
        self.backend = check_backend(backend)
        self.depthwise = DepthwiseConv2d(channels, kernel_size, boundary="periodic")
        self._init_reaction(channels, h)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        self._check_input(y)
        rhs = y + self.h * self.reaction(y)                                # y + h σ(N(M y))
        return implicit_solve(rhs, self.depthwise.weight, self.h, backend=self.backend)


class CirculantRDStep(_RDStep):
    """The block-circulant reaction-diffusion step: eq. 9 with K_circ (eq. 12) for K_dw,

        y_{j+1} = y_j + h (−K_circᵀ K_circ y_j + σ(N(M y_j)))

    ``depthwise`` is a :class:`~effconv_ref.circulant.CirculantConv2d` (one stencil per
    channel, circulant in the channels and periodic in space). Parameters:
    ``k² C + C² + 2C``, as for the other RD steps.
    """

    def __init__(self, channels: int, kernel_size: int = 3, h: float = DEFAULT_H) -> None:
        super().__init__()
        self.channels = _check_channels(channels)
        self.kernel_size = _check_kernel_size(kernel_size)
        self.boundary = "periodic"
        self.depthwise = CirculantConv2d(channels, kernel_size)
        self._init_reaction(channels, h)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        self._check_input(y)
        diffusion = self.depthwise.adjoint(self.depthwise(y))              # K_circᵀ K_circ y
        return y + self.h * (self.reaction(y) - diffusion)
