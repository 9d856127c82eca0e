"""The CUDA build helper, backend selection, and the first kernel (spectral multiply)."""


import pytest
import torch

from effconv_ref import kernels
from effconv_ref.backend import resolve_backend
from effconv_ref.kernels import build
from effconv_ref.ops.spectral import SpectralMultiply, spectral_multiply



def periodic_conv_by_loops(x, w):
    """y[b, c, i, j] = sum_{u, v} w[c, u, v] x[b, c, (i - u) mod H, (j - v) mod W] (true convolution)."""
    B, C, H, W = x.shape
    y = torch.zeros_like(x)
    for u in range(w.shape[-2]):
        for v in range(w.shape[-1]):
            y += w[:, u, v].view(1, C, 1, 1) * torch.roll(x, shifts=(u, v), dims=(2, 3))
    return y


def test_convolution_theorem_through_spectral_multiply():
    """irfft2(rfft2(x) * rfft2(w)) is the periodic convolution of x with w, channel by channel."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 10, dtype=torch.float64, generator=g)
    w = torch.randn(3, 3, 3, dtype=torch.float64, generator=g)
    w_hat = torch.fft.rfft2(w, s=(7, 10))
    y = torch.fft.irfft2(spectral_multiply(torch.fft.rfft2(x), w_hat), s=(7, 10))
    torch.testing.assert_close(y, periodic_conv_by_loops(x, w), rtol=1e-12, atol=1e-12)


def test_spectral_multiply_broadcasts_symbol_over_batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 5, 6, dtype=torch.complex128, generator=g)
    k = torch.randn(3, 5, 6, dtype=torch.complex128, generator=g)
    y = spectral_multiply(x, k)
    for b in range(4):
        torch.testing.assert_close(y[b], x[b] * k, rtol=0, atol=0)


def test_spectral_multiply_gradcheck():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 4, 3, dtype=torch.complex128, generator=g, requires_grad=True)
    k = torch.randn(3, 4, 3, dtype=torch.complex128, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: SpectralMultiply.apply(a, b, False), (x, k))


def test_spectral_multiply_errors():
    x = torch.randn(2, 3, 4, 4, dtype=torch.complex64)
    with pytest.raises(TypeError, match="complex"):
        spectral_multiply(x.real, torch.randn(3, 4, 4, dtype=torch.complex64))
    with pytest.raises(ValueError, match="trailing dimensions"):
        spectral_multiply(x, torch.randn(3, 4, 5, dtype=torch.complex64))
    with pytest.raises(ValueError, match="backend='nope' is not a backend"):
        spectral_multiply(x, torch.randn(3, 4, 4, dtype=torch.complex64), backend="nope")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_cuda_backend_without_gpu_is_a_clear_error():
    x = torch.randn(1, 3, 4, 4, dtype=torch.complex64)
    with pytest.raises(ValueError, match="backend='cuda' needs a CUDA GPU"):
        spectral_multiply(x, torch.randn(3, 4, 4, dtype=torch.complex64), backend="cuda")
    assert resolve_backend("auto", x) == "reference"
    assert "no CUDA GPU" in kernels.why_cannot_run()


def test_cpu_only_torch_is_named(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "CPU-only build" in kernels.why_cannot_compile()
    with pytest.raises(kernels.KernelUnavailable, match="cannot compile the CUDA kernel 'spectral'.*CPU-only"):
        build.load_cuda("spectral", ["spectral.cu"], "", [])


def test_missing_nvcc_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(build, "_is_toolkit", lambda folder: False)
    assert "no CUDA toolkit was found" in kernels.why_cannot_compile()


def test_arch_list(monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.6")
    assert kernels.arch_list() == "8.6"
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")
    if not torch.cuda.is_available():
        assert kernels.arch_list() == build.DEFAULT_ARCHS


@pytest.mark.compile
def test_spectral_kernel_compiles(nvcc):
    """Compiles kernels/spectral.cu with nvcc for the GPUs readers use; CI must not skip this."""
    from effconv_ref.ops import spectral

    module = spectral._kernel()
    assert callable(module.spectral_multiply)
    assert spectral._kernel() is module  # cached: a second call does not rebuild


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_spectral_kernel_matches_reference_on_gpu():
    g = torch.Generator(device="cuda").manual_seed(3)
    for shape in [(1, 3, 5, 4), (64, 256, 64, 33), (2, 7, 9, 6)]:
        x = torch.randn(*shape, dtype=torch.complex64, device="cuda", generator=g, requires_grad=True)
        k = torch.randn(*shape[1:], dtype=torch.complex64, device="cuda", generator=g, requires_grad=True)
        y = spectral_multiply(x, k, backend="cuda")
        ref = x.detach().cdouble() * k.detach().cdouble()
        assert ((y.detach().cdouble() - ref).norm() / ref.norm()) < 1e-6
        gy = torch.randn_like(y)
        gx, gk = torch.autograd.grad(y, (x, k), gy)
        rx, rk = torch.autograd.grad(x * k, (x, k), gy)
        torch.testing.assert_close(gx, rx, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gk, rk, rtol=1e-4, atol=1e-4)
