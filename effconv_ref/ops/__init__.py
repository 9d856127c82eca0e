"""Functional operators: the math of the book as functions of tensors."""

from effconv_ref.ops.implicit import implicit_solve
from effconv_ref.ops.spectral import spectral_multiply
from effconv_ref.ops.spectral_step import spectral_step

__all__ = ["implicit_solve", "spectral_multiply", "spectral_step"]
