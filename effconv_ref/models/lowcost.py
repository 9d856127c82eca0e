"""The networks of section 4 of Treister et al., "Low-Cost Parameterizations of Deep
Convolutional Neural Networks", built by name as ``lowcost/<step>-<net>``.

Architecture (the paper's "base architecture", after Chang et al. 2017)::

    opening   5x5 convolution in_channels -> w_1 (no bias), BatchNorm, ReLU
    block i   four steps of width w_i (one of effconv_ref.steps)
    connect   x -> N([x; K_dw x])  (w_i -> 2 w_i channels), then 2x2 average pooling
              ... between consecutive blocks only ...
    head      global average pooling, linear classifier w_last -> num_classes

Steps ``resnet`` (:class:`~effconv_ref.steps.ResNetStep`), ``mobilenet`` (eq. 13),
``linearmix`` (eq. 7 in a ResNet step), ``exprd`` (eq. 9), ``imprd`` (eq. 11), ``circrd``
(eq. 9 with the block-circulant K of eq. 12); networks ``A`` = 32-64-128,
``B`` = 48-96-192, ``C`` = 32-64-128-256. That makes 18 registered names, e.g.
``build("lowcost/imprd-A", num_classes=10)``. Keyword arguments other than
``num_classes`` and ``in_channels`` go to the step (``h=``, ``kernel_size=``,
``boundary=``).

Readings of the text, and why
-----------------------------
- **Blocks and connecting layers.** A connecting layer sits between two blocks and
  doubles the width, so the widths must double (32-64-128): A and B have three blocks
  and two connecting layers, C four blocks and three. The last block is *not* followed
  by a connecting layer: it goes straight to the global pooling ("The last block consists
  of a pooling layer ..."). With a connecting layer after the last block as well, RD-A
  would have 104K parameters instead of the paper's 101K (and 256 classifier inputs).
- **The connecting layer** is exactly ``N([x; K_dw x])``: a 3x3 depth-wise convolution
  (zero boundary, no bias), concatenation, BatchNorm on the 2w channels, and no
  nonlinearity, since the paper writes none (a ReLU has no parameters, so Table 2 cannot
  decide this). Its cost is ``9w + 4w`` parameters.
- **No biases** in the opening convolution or the steps' convolutions (each is followed
  by a normalisation, or is the K of a residual term); the classifier has a bias.
- **MobileNet** follows eq. 13 literally: two BatchNorms per step and no skip connection.
  That costs ``4w`` more per step than an RD step, so our MobileNet counts are 1.2-1.7%
  above the paper's (which lists the same 101K / 216K as for the RD networks).
- **ResNet** follows eq. 3 literally: one BatchNorm per step, between K1 and the ReLU.

Parameter counts (Table 2)
--------------------------
Per step of width w (3x3 stencils): ResNet ``18w² + 2w``, MobileNet ``w² + 13w``,
LinearMix ``2w² + 20w``, every RD step ``w² + 11w`` (K_circ has ``9w`` weights, like
K_dw, so explicit, implicit and circulant RD cost the same). Opening ``75 w_1 + 2 w_1``
(5x5 stencils on 3 input channels, and BN), each connecting layer ``13 w``, classifier
``(w_last + 1) · classes``.

Ours against the paper's printed counts::

                 10 classes (CIFAR-10, STL-10)              100 classes (CIFAR-100)
    step         A ours     paper   B ours     paper     B ours     paper   C ours     paper
    ResNet       1,555,082  1.5M    3,493,834  3.5M      3,511,204  3.4M    6,301,796  6.3M
    MobileNet      102,666  101K      218,506  216K        235,876  251K      404,196  423K
    LinearMix      194,954  195K      421,450  422K        438,820  456K      765,796  789K
    RD (x3)        100,874  101K      215,818  216K        233,188  250K      400,356  423K

With 10 classes every count is within 2% of the paper's except ResNet-A: its 24 fully
coupled 3x3 convolutions alone hold ``72 (32² + 64² + 128²) = 1,548,288`` weights, 3.2%
above the printed 1.5M, so no reading of the architecture gets within 2%; printed to two
figures, "1.5M" means [1.45M, 1.55M), and our 1,555,082 is 0.3% above that (3.7% above
1.5M). MobileNet is 1.65% (A) and 1.16% (B) above the paper, for the second BatchNorm of
eq. 13.

**CIFAR-100.** Going from 10 to 100 classes changes only the classifier: it adds
``90 · (w_last + 1)`` parameters, 17,370 for B (w_last = 192) and 23,130 for C
(w_last = 256). The paper's CIFAR-100 column does not follow from its CIFAR-10 column
that way. For B it adds about twice that (RD-B 216K -> 250K, LinearMix-B 422K -> 456K,
MobileNet-B 216K -> 251K: +34-35K instead of +17K), and for ResNet-B it *drops*
(3.5M -> 3.4M), which no change of the classifier can do. So our 100-class counts are
below the paper's by 3-7% (RD-B 6.7%, MobileNet-B 6.0%, RD-C 5.4%, MobileNet-C 4.4%,
LinearMix-B 3.8%, LinearMix-C 2.9%), above it for ResNet-B (3.3%), and equal for
ResNet-C (to rounding). The paper's RD and LinearMix numbers for B and C are all matched,
to the printed digits, by our count plus a second ``90 · w_last`` (250,468; 423,396;
456,100; 788,836), as if the classifier's growth had been counted twice; we do not
reproduce that.
"""

from typing import Sequence

import torch
import torch.nn as nn

from effconv_ref.depthwise import DepthwiseConv2d
from effconv_ref.models.registry import register
from effconv_ref.steps import (
    CirculantRDStep,
    ExplicitRDStep,
    ImplicitRDStep,
    LinearMixStep,
    MobileNetStep,
    ResNetStep,
)

__all__ = ["STEPS", "NETWORKS", "ConnectingLayer", "LowCostNet"]

STEPS = {
    "resnet": ResNetStep,
    "mobilenet": MobileNetStep,
    "linearmix": LinearMixStep,
    "exprd": ExplicitRDStep,
    "imprd": ImplicitRDStep,
    "circrd": CirculantRDStep,
}

NETWORKS = {
    "A": (32, 64, 128),
    "B": (48, 96, 192),
    "C": (32, 64, 128, 256),
}

STEPS_PER_BLOCK = 4


class ConnectingLayer(nn.Module):
    """The connecting layer between blocks: ``x ↦ N([x; K_dw x])``, ``C -> 2C`` channels.

    ``depthwise`` is a ``k x k`` depth-wise convolution (zero boundary), ``norm`` a
    BatchNorm over the ``2C`` concatenated channels; no nonlinearity (section 4).
    """

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.channels = channels
        self.depthwise = DepthwiseConv2d(channels, kernel_size, boundary="zeros")
        self.norm = nn.BatchNorm2d(2 * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(torch.cat([x, self.depthwise(x)], dim=1))

    def extra_repr(self) -> str:
        return f"{self.channels} -> {2 * self.channels}"


class LowCostNet(nn.Module):
    """Section 4's base network with ``step`` (a key of :data:`STEPS`) in every block.

    ``widths`` are the blocks' widths, each twice the one before (the connecting layer
    doubles the channels); ``step_kwargs`` go to every step (``h=``, ``kernel_size=``, ...).
    """

    def __init__(self, step: str, widths: Sequence[int], num_classes: int = 10,
                 in_channels: int = 3, steps_per_block: int = STEPS_PER_BLOCK,
                 **step_kwargs) -> None:
        super().__init__()
        if step not in STEPS:
            raise ValueError(f"step={step!r} is not a step; choose one of {', '.join(STEPS)}")
        widths = tuple(widths)
        if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"widths must be positive integers, got {widths!r}")
        for a, b in zip(widths, widths[1:]):
            if b != 2 * a:
                raise ValueError(
                    f"widths={widths}: each width must be twice the previous one, because the "
                    "connecting layer [x; K_dw x] doubles the channels"
                )
        if steps_per_block < 1:
            raise ValueError(f"steps_per_block must be >= 1, got {steps_per_block}")
        if num_classes < 1 or in_channels < 1:
            raise ValueError(f"num_classes and in_channels must be >= 1, got {num_classes}, {in_channels}")
        self.step, self.widths = step, widths
        self.opening = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 5, padding=2, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        layers = []
        for i, width in enumerate(widths):
            layers.append(nn.Sequential(*[STEPS[step](width, **step_kwargs) for _ in range(steps_per_block)]))
            if i + 1 < len(widths):
                layers.append(ConnectingLayer(width))
                layers.append(nn.AvgPool2d(2))
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        nn.init.kaiming_normal_(self.opening[0].weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.opening(x))
        return self.fc(torch.flatten(self.pool(x), 1))

    def extra_repr(self) -> str:
        return f"step={self.step!r}, widths={self.widths}"


def _factory(step: str, net: str):
    def factory(num_classes: int = 10, in_channels: int = 3, **kwargs) -> LowCostNet:
        return LowCostNet(step, NETWORKS[net], num_classes=num_classes, in_channels=in_channels, **kwargs)

    widths = "-".join(map(str, NETWORKS[net]))
    factory.__name__ = factory.__qualname__ = f"lowcost_{step}_{net}"
    factory.__doc__ = f"Network {net} ({widths}) with {STEPS[step].__name__} steps (Treister et al., sec. 4)."
    return factory


for _step in STEPS:
    for _net in NETWORKS:
        register(f"lowcost/{_step}-{_net}")(_factory(_step, _net))
