"""The networks of "Factorized Convolutional Neural Networks" (Wang, Liu & Foroosh, 2017),
built by name as ``factorized/<letter>``: Table 1's models A-F, the TpS and grouping
models G, H, I of Table 5, J of Table 6, and the deeper L and M of Table 7.

The skeleton (Table 1; input 221x221)::

    stage 1   7x7 convolution, stride 2, no padding, in_channels -> 64     221 -> 108
              3x3 max pooling, stride 3                                    108 -> 36
    stage 2   1x1 convolution 64 -> 128, then the body at 128 channels      36x36
              2x2 max pooling, stride 2                                     36 -> 18
    stage 3   1x1 convolution 128 -> 256, then the body at 256 channels     18x18
              3x3 max pooling, stride 3                                     18 -> 6
    stage 4   1x1 convolution 256 -> 512, then the body at 512 channels     6x6
    head      1x1 convolution 512 -> 1024, 6x6 average pooling,
              fully connected 1024 -> 2048, dropout 0.2, fully connected 2048 -> num_classes

Every convolution (with its residual, where it has one) is followed by batch
normalisation and ReLU ("Batch normalization is placed after each convolutional layer and
before the ReLU layer", section 3); the fully connected hidden layer by ReLU. Only the
bodies differ (``c`` = the stage's width)::

    A  (3, c) x 2        two standard 3x3 convolutions                      Table 1
    B  [3, 4, c] x 2     two unravelled convolutions, b = 4 bases            Table 1
    C  <3, c> x 2        two SIC layers                                      Table 1
    D  <3, c> x 4        four SIC layers                                     Table 1
    E  <3, c> x 6        six SIC layers                                      Table 1
    F  <5, c> x 4        four SIC layers with 5x5 filters                    Table 1
    G  each 3x3 layer of A as two 3x3 TpS layers, 2-D grid (4 per stage)     Table 4
    H  each 3x3 layer of A as two 3x3 TpS layers, 3-D grid (4 per stage)     Table 4
    I  each 3x3 layer of A as two 3x3 convolutions in 4 groups (4 per stage) section 3.2
    J  D with twice the SIC layers (8 per stage), 2-D TpS projections        Table 4, 3.2
    L  four channel-wise bottleneck pairs of SIC layers (8 layers per stage) section 3.3
    M  six bottleneck pairs (12 layers per stage)                            section 3.3

The layers come from :mod:`effconv_ref.sic`. Table 4's grids (``d``, then ``t``)::

    channels   2-D grid      2-D neighbourhood    3-D grid     3-D neighbourhood
    128        8 x 16        4 x 8                4 x 8 x 4    2 x 5 x 3
    256        16 x 16       8 x 8                8 x 8 x 4    4 x 5 x 3
    512        16 x 32       8 x 16               8 x 8 x 8    4 x 5 x 6

Multiply-adds per 221x221 image (conv and fully connected layers, as the paper counts;
:func:`table1`) and parameters with 1000 classes::

    model   ours (221)      paper      ours (224)      parameters
    A       1,092,987,904   1093M      1,095,029,440   11,054,632
    B         593,185,792    593M        595,227,328    7,678,504
    C         267,326,464    268M        269,368,000    5,565,736
    D         375,946,240    376M        377,987,776    6,273,576
    E         484,566,016    485M        486,607,552    6,981,416
    F         393,051,136    393M        395,092,672    6,330,920
    G         625,847,296     -          627,888,832    7,961,640
    H         596,651,008     -          598,692,544    7,768,104
    I         625,847,296     -          627,888,832    7,961,640
    J         281,758,720     -          283,800,256    5,624,872
    L         380,756,992    381M        382,798,528    6,293,288   (Table 7: 6.3M)
    M         491,782,144    492M        493,823,680    7,010,984   (Table 7: 7M)

**C is 267.3M from its own layer list, not 268M.** Every other entry of Table 1 is our
count rounded (A 1,092,987,904 -> 1093M, D -> 376M, E -> 485M, F -> 393M); C's layers
(158,706,688 in the skeleton plus two SIC layers per stage at ``c k² h w + c² h w``, eq. 7)
sum to 267,326,464, 0.25% below the printed 268M. Table 7's L and M are 381M and 492M; ours
are 0.06% and 0.04% below. At 224 only the first convolution sees a larger image (109x109
instead of 108x108, +2,041,536); the pools bring both sizes to 36, 18 and 6.

Readings of the text, and why
-----------------------------
- **Where the residual and the normalisation sit.** Figure 1 draws the residual as part of
  the layer: the standard layer "with residual connection" (1a), and the SIC layer whose
  "linear projection ... [is] followed by the residual connection from the input" (1b,
  section 2.2.3); section 3 puts BN "after each convolutional layer and before the ReLU".
  So a layer is ``relu(bn(f(x) + x))``, ``f`` the convolution: :class:`SICConv2d` with its
  own residual, and :class:`Residual` around the standard, unravelled, grouped and TpS
  convolutions. Each layer is thus one linear map (``dense_weight`` with the identity
  tap) followed by BN and ReLU, the unit the paper factorises. The other common placement,
  ResNet's ``relu(bn(f(x)) + x)``, is also compatible with the text and costs the same;
  He et al. (2016b) found BN after the addition worse for a 110-layer ResNet on CIFAR-10.
- **Which layers have a residual.** "The residual learning technique is applied to each
  convolutional layer or channel-wise bottleneck structure that have same dimension of
  input and output" (section 2) and "Residual connection is added after every
  convolutional layer with same number of input and output channels" (baseline, section
  3): every body layer of A-J (all keep the width), each bottleneck pair of L and M; not
  the 7x7 convolution, the widening 1x1 convolutions or the 512 -> 1024 one.
- **No batch normalisation between a SIC layer's two convolutions.** The SIC layer is
  "single intra-channel convolution and linear projection with residual connection"
  (2.2.3), eq. (3) with ``b = 1``: one factored linear map; Figure 1(b) draws nothing
  between them. The same holds for the unravelled layer (eqs. 4-5).
- **Model I** applies "the straightforward grouping strategy" to A, "both the input and
  output channels are divided into 4 groups", and doubles "the number of layers per stage":
  four 3x3 convolutions with ``groups=4`` per stage, each with its residual.
- **Models G and H** replace "each convolutional layer with two convolutional layers with
  topological subdivisioning": four 3x3 :class:`TpSConv2d` layers per stage with Table 4's
  grids. Their complexity per stage is 2 x 1/4 = 1/2 (G) and 2 x 30/128 = 15/32 (H) of A's,
  Table 5's "~1/2" and "~15/32".
- **Model J** is D "doubling the number of SIC layers in each stage and applying 2D TpS to
  the linear projection in each SIC layer": eight SIC layers per stage, each projection a
  1x1 :class:`TpSConv2d` on Table 4's 2-D grid (density 1/4). Its projections cost 8 x 1/4
  = 2 of D's single projections, as C's two do: Table 6's "~1/9" of A.
- **"Comp" (Tables 2, 5, 6)** counts the channel-mixing part of the body only: B's 4/9 is
  ``b c n`` of eq. (6) over A's ``9 c n``, leaving out the bases' ``b c k²``; C's 1/9
  leaves out the depth-wise filters. :func:`stage_costs` splits each stage into the two
  parts; the channel-mixing ratios to A are exactly 4/9, 1/9, 2/9, 1/3, 1/2, 15/32, 1/2
  and 1/9 for B, C, D, E, G, H, I, J.
- **Models L and M** ("8 and 12 layers in each stage", "the same spatial dimensions and
  stage structures as in Table 1", "channel-wise bottleneck structure ... the number of
  channels is first reduced by half by the first layer, then recovered by the second
  layer", "only the SIC layer is used"): four and six pairs ``SICConv2d(c, 3,
  out_channels=c/2)`` then ``SICConv2d(c/2, 3, out_channels=c)``, each pair in a residual
  (:class:`BottleneckPair`); the 8 and 12 layers are the SIC layers, the opening 1x1 is
  not one of them. What we had to assume: 3x3 filters (the text gives no kernel size; 5x5
  filters would add 25.7M to L and 38.5M to M and miss Table 7 by 7% and 8%), and BN and
  ReLU after the first layer of a pair as after every convolution. With these the counts
  land on Table 7: 380,756,992 multiply-adds (381M printed) and 6,293,288 parameters
  (6.3M) for L, 491,782,144 (492M) and 7,010,984 (7M) for M. A pair costs one SIC layer's
  projection ``c² h w`` and 1.5 of its depth-wise filters.
- **No N and O.** "Model N and O adopt the same structure as in [6]. They have different
  pooling strides and one more stages right after the first 7x7 convolutional layer. From
  the second to the fifth stage, model N has 20, 24, 24 and 32 layers, and model O has 20,
  32, 56, and 56 layers ... The detailed model configurations are put in the supplemental
  materials." The supplement is not available, and the text fixes neither the widths nor
  the pooling strides nor the stage-opening layers, so neither network is built.
- **No model K.** The paper's letters skip it (J, then L).
- **Small images and other sizes.** The max-pools round down, as PyTorch's and Torch's do:
  221 and 224 both give 36 -> 18 -> 6, so at 224, the size of Table 7's comparison, a
  network costs only its first convolution's 2,041,536 more than the paper counts at 221
  (0.4% of M). A map smaller than a pool's window (below 41x41 images, where rounding down
  would leave nothing) is pooled with ceil rounding, keeping the one partial window
  (:class:`MaxPool`), so that any image of at least 7x7 runs: 32x32 gives 13 -> 4 -> 2 -> 1
  for training on a CPU, 64x64 29 -> 9 -> 4 -> 1. The 6x6 average pool is an adaptive
  average pool to 1x1: the same at 221 and 224, where the map is 6x6, and global on other
  sizes.
- **Initialisation**: PyTorch's defaults (the paper does not say); BN with weight 1 and
  bias 0. The convolutions have no bias (each is followed by BN); the fully connected
  layers have one.
"""

from __future__ import annotations

from fractions import Fraction

import torch
import torch.nn as nn
import torch.nn.functional as F

from effconv_ref.checks import check_input
from effconv_ref.cost import layer_macs
from effconv_ref.models.registry import register
from effconv_ref.sic import SICConv2d, TpSConv2d, UnravelledConv2d

__all__ = [
    "MODELS",
    "TPS_2D",
    "TPS_3D",
    "BottleneckPair",
    "FactorizedNet",
    "Residual",
    "MaxPool",
    "comp",
    "stage_costs",
    "table1",
]

WIDTHS = (128, 256, 512)  # stages 2, 3, 4
POOLS = (3, 2, 3)  # the max-pool before stages 2, 3, 4: kernel = stride
DROPOUT = 0.2

# Table 4: channels -> (grid d, neighbourhood t)
TPS_2D = {128: ((8, 16), (4, 8)), 256: ((16, 16), (8, 8)), 512: ((16, 32), (8, 16))}
TPS_3D = {128: ((4, 8, 4), (2, 5, 3)), 256: ((8, 8, 4), (4, 5, 3)), 512: ((8, 8, 8), (4, 5, 6))}

MODELS = {
    "A": "standard 3x3 convolutions, (3, n) x 2",
    "B": "unravelled convolutions with 4 bases, [3, 4, n] x 2",
    "C": "SIC layers, <3, n> x 2",
    "D": "SIC layers, <3, n> x 4",
    "E": "SIC layers, <3, n> x 6",
    "F": "5x5 SIC layers, <5, n> x 4",
    "G": "3x3 TpS layers on Table 4's 2-D grids, x 4",
    "H": "3x3 TpS layers on Table 4's 3-D grids, x 4",
    "I": "3x3 convolutions in 4 groups, x 4",
    "J": "SIC layers with 2-D TpS projections, x 8",
    "L": "bottleneck pairs of SIC layers, 8 layers",
    "M": "bottleneck pairs of SIC layers, 12 layers",
}


class Residual(nn.Module):
    """``f(x) + x``: the residual connection of Figure 1(a) around a layer ``f`` that keeps
    the number of channels."""

    def __init__(self, f: nn.Module):
        super().__init__()
        self.f = f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x) + x


def conv_bn_relu(f: nn.Module, channels: int) -> nn.Sequential:
    """One layer of the network: ``relu(bn(f(x)))``, ``channels`` = ``f``'s output channels."""
    return nn.Sequential(f, nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


class BottleneckPair(nn.Module):
    """Section 3.3's channel-wise bottleneck of two SIC layers, ``c -> c/2 -> c``, with one
    residual around the pair: ``relu(bn_b(sic_b(relu(bn_a(sic_a(x)))) + x))``."""

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        if channels % 2:
            raise ValueError(f"a bottleneck pair halves the channels; channels={channels} must be even")
        half = channels // 2
        self.sic_a = SICConv2d(channels, kernel_size, out_channels=half)
        self.bn_a = nn.BatchNorm2d(half)
        self.sic_b = SICConv2d(half, kernel_size, out_channels=channels)
        self.bn_b = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn_a(self.sic_a(x)))
        return torch.relu(self.bn_b(self.sic_b(h) + x))


def body(model: str, c: int) -> list[nn.Module]:
    """The layers of one stage after its opening 1x1 convolution, at ``c`` channels."""
    def standard(groups=1):
        return nn.Conv2d(c, c, 3, padding=1, groups=groups, bias=False)

    if model == "A":
        return [conv_bn_relu(Residual(standard()), c) for _ in range(2)]
    if model == "B":
        return [conv_bn_relu(Residual(UnravelledConv2d(c, c, 3, bases=4)), c) for _ in range(2)]
    if model in ("C", "D", "E", "F"):
        layers, k = {"C": (2, 3), "D": (4, 3), "E": (6, 3), "F": (4, 5)}[model]
        return [conv_bn_relu(SICConv2d(c, k), c) for _ in range(layers)]
    if model in ("G", "H"):
        grid, t = (TPS_2D if model == "G" else TPS_3D)[c]
        return [conv_bn_relu(Residual(TpSConv2d(c, 3, grid, t)), c) for _ in range(4)]
    if model == "I":
        return [conv_bn_relu(Residual(standard(groups=4)), c) for _ in range(4)]
    if model == "J":
        grid, t = TPS_2D[c]
        return [conv_bn_relu(SICConv2d(c, 3, grid=grid, neighborhood=t), c) for _ in range(8)]
    if model in ("L", "M"):
        return [BottleneckPair(c, 3) for _ in range(4 if model == "L" else 6)]
    raise ValueError(f"model={model!r}; choose one of {', '.join(MODELS)}")


class Stage(nn.Module):
    """A stage of Table 1: the 1x1 convolution that widens to ``c`` (``opening``), then the
    ``body``."""

    def __init__(self, model: str, in_channels: int, c: int):
        super().__init__()
        self.opening = conv_bn_relu(nn.Conv2d(in_channels, c, 1, bias=False), c)
        self.body = nn.Sequential(*body(model, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.opening(x))


class MaxPool(nn.MaxPool2d):
    """Table 1's ``k x k`` max-pooling with stride ``k``, rounding down; a map smaller than
    the window (in either direction) is pooled with ceil rounding, its one partial window
    kept, so that small images run."""

    def __init__(self, kernel_size: int):
        super().__init__(kernel_size, kernel_size)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, ceil rounding on maps smaller than the window"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        small = min(x.shape[-2:]) < self.kernel_size
        return F.max_pool2d(x, self.kernel_size, self.stride, ceil_mode=small)


class FactorizedNet(nn.Module):
    """Table 1's skeleton with the body of ``model`` (a letter of :data:`MODELS`) in stages
    2-4; images of at least 7x7 pixels (221x221 in the paper)."""

    def __init__(self, model: str, num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        if model not in MODELS:
            raise ValueError(f"model={model!r}; choose one of {', '.join(MODELS)} (Tables 1 and 4-7)")
        self.model = model
        self.in_channels = in_channels
        self.stem = conv_bn_relu(nn.Conv2d(in_channels, 64, 7, stride=2, bias=False), 64)
        self.pools = nn.ModuleList(MaxPool(k) for k in POOLS)
        self.stages = nn.ModuleList(Stage(model, c_in, c) for c_in, c in zip((64,) + WIDTHS, WIDTHS))
        self.widen = conv_bn_relu(nn.Conv2d(WIDTHS[-1], 1024, 1, bias=False), 1024)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(1024, 2048), nn.ReLU(inplace=True), nn.Dropout(DROPOUT))
        self.classifier = nn.Linear(2048, num_classes)

    def extra_repr(self) -> str:
        return f"model={self.model!r}: {MODELS[self.model]}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, argument="in_channels")
        if min(x.shape[-2:]) < 7:
            raise ValueError(f"input is {x.shape[-2]}x{x.shape[-1]}; the 7x7 convolution of stage 1 "
                             "(unpadded) needs images of at least 7x7")
        x = self.stem(x)
        for pool, stage in zip(self.pools, self.stages):
            x = stage(pool(x))
        x = torch.flatten(self.pool(self.widen(x)), 1)
        return self.classifier(self.fc(x))


def _factory(letter: str):
    def factory(num_classes: int = 1000, in_channels: int = 3, **kwargs) -> FactorizedNet:
        return FactorizedNet(letter, num_classes, in_channels, **kwargs)

    factory.__name__ = f"factorized_{letter}"
    factory.__doc__ = f"Model {letter}: {MODELS[letter]} per stage."
    return factory


for _letter in MODELS:
    register(f"factorized/{_letter}")(_factory(_letter))
del _letter


# --------------------------------------------------------------------------------------
# what the networks cost
# --------------------------------------------------------------------------------------


def _is_intra(row: dict) -> bool:
    """A depth-wise (intra-channel) convolution: eq. (4)'s bases, a SIC layer's filter."""
    return row["type"] == "Conv2d" and row["groups"] == row["in_channels"] > 1


def stage_costs(model: FactorizedNet, image_size: int = 221) -> list[dict]:
    """Multiply-adds of each stage's body on one ``image_size²`` image, in two parts:
    ``intra``, the intra-channel (depth-wise) filters, and ``channel``, every layer that mixes
    channels (standard, grouped and TpS convolutions, projections). Tables 2, 5 and 6's
    "Comp" is ``channel`` over model A's. Also ``channels``, ``size`` (the map's side) and
    ``body`` (``intra + channel``)."""
    rows = layer_macs(model, (model.in_channels, image_size, image_size))
    costs = []
    for i, stage in enumerate(model.stages):
        prefix = f"stages.{i}.body."
        mine = [r for r in rows if r["name"].startswith(prefix)]
        intra = sum(r["macs"] for r in mine if _is_intra(r))
        channel = sum(r["macs"] for r in mine if not _is_intra(r))
        size = next(r["output_size"] for r in rows if r["name"] == f"stages.{i}.opening.0")[0]
        costs.append({"stage": i + 2, "channels": WIDTHS[i], "size": size, "intra": intra,
                      "channel": channel, "body": intra + channel})
    return costs


def comp(model: str, image_size: int = 221) -> Fraction:
    """Tables 2, 5 and 6's "Comp" of ``model``: its bodies' channel-mixing multiply-adds
    over model A's, as an exact fraction."""
    def channel(letter):
        with torch.device("meta"):
            net = FactorizedNet(letter)
        return sum(s["channel"] for s in stage_costs(net, image_size))
    return Fraction(channel(model), channel("A"))


def table1(image_size: int = 221, models: str = "ABCDEFLM") -> list[dict]:
    """Our multiply-adds per image beside the paper's: Table 1 (A-F) and Table 7 (L, M).

    Each row: ``model``, ``macs`` (conv and fully connected layers, :func:`layer_macs`),
    ``paper`` (the printed count from ``data/papers/factorized_tables.json``; ``None`` for
    G-J, which the paper does not count), ``relative`` (``macs / paper - 1``) and ``params``
    (with 1000 classes)."""
    from effconv_ref.resources import read_json

    tables = read_json("papers/factorized_tables.json")
    printed = {e["model"]: e["flops"] for e in tables["table1"]["entries"] + tables["table7"]["entries"]}
    rows = []
    for letter in models:
        with torch.device("meta"):
            net = FactorizedNet(letter)
        macs = sum(r["macs"] for r in layer_macs(net, (3, image_size, image_size)))
        paper = printed.get(letter)
        rows.append({"model": letter, "macs": macs, "paper": paper,
                     "relative": macs / paper - 1 if paper else None,
                     "params": sum(p.numel() for p in net.parameters())})
    return rows
