"""effconv_ref: the cheap convolutions of the effconv book, each as a readable reference
in plain PyTorch and, where the paper promises speed, a fast GPU path."""

from effconv_ref.runtime import SCALES, device, scale, seed_everything
from effconv_ref.acdc import ACDC, ACDCConv2d, ACDCStack
from effconv_ref.circulant import CirculantConv2d
from effconv_ref.depthwise import DepthwiseConv2d
from effconv_ref.lean import LeanConv2d
from effconv_ref.linearmix import LinearMix
from effconv_ref.sic import SICConv2d, TpSConv2d, UnravelledConv2d
from effconv_ref.steps import (
    CirculantRDStep,
    ExplicitRDStep,
    ImplicitRDStep,
    LinearMixStep,
    MobileNetStep,
    ResNetStep,
)

__version__ = "0.1.0"

__all__ = [
    "ACDC",
    "ACDCConv2d",
    "ACDCStack",
    "SCALES",
    "SICConv2d",
    "TpSConv2d",
    "UnravelledConv2d",
    "CirculantConv2d",
    "CirculantRDStep",
    "DepthwiseConv2d",
    "ExplicitRDStep",
    "ImplicitRDStep",
    "LeanConv2d",
    "LinearMix",
    "LinearMixStep",
    "MobileNetStep",
    "ResNetStep",
    "__version__",
    "device",
    "scale",
    "seed_everything",
]
