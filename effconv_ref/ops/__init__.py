"""Functional operators: the math of the book as functions of tensors."""

from effconv_ref.ops.spectral import spectral_multiply

__all__ = ["spectral_multiply"]
