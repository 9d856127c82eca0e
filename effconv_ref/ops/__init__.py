"""Functional operators: the math of the book as functions of tensors.

``effconv_ref.ops.spectral_step`` (the module) holds the fused spectral step of the FFT paths.
"""

from effconv_ref.ops.implicit import implicit_solve
from effconv_ref.ops.spectral import spectral_multiply

__all__ = ["implicit_solve", "spectral_multiply"]
