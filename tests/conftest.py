"""Shared test helpers."""

import os

import torch

# With no GPU the Triton kernels are proven in Triton's interpreter. It must be on before Triton is
# first imported (importing effconv_ref imports it), and for the notebooks nbval runs.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from effconv_ref import kernels  # noqa: E402


@pytest.fixture
def nvcc():
    """For tests that compile a CUDA kernel: skip without a compiler, but never in CI,
    which must prove that every kernel compiles."""
    reason = kernels.why_cannot_compile()
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must compile the CUDA kernels, but: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def built_book(tmp_path_factory):
    """The HTML of the book, built once for every test that reads it. Read it, do not
    change it: a test that rewrites pages works on a copy."""
    pytest.importorskip("yaml")  # PyYAML: the book build needs it
    from book_pages import build_book

    return build_book(tmp_path_factory.mktemp("book"))
