"""The spectral step (multiply, adjoint, solve) and its fused CUDA kernel, kernels/spectral_step.cu."""


import pytest
import torch

from effconv_ref.circulant import CirculantConv2d
from effconv_ref.depthwise import DepthwiseConv2d
from effconv_ref.ops import implicit_solve
from effconv_ref.ops.spectral_step import MODES, SpectralStep, spectral_step



def crand(*shape, seed=0, dtype=torch.complex128, device="cpu"):
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(*shape, dtype=dtype, device=device, generator=g)


def by_formula(x, k, mode, h=None):
    if mode == "multiply":
        return x * k
    if mode == "adjoint":
        return x * k.conj()
    return x / (1 + h * k.abs() ** 2)


@pytest.mark.parametrize("mode", MODES)
def test_matches_the_formula_and_broadcasts(mode):
    x, k = crand(3, 2, 5, 4, seed=1), crand(2, 5, 4, seed=2)
    y = spectral_step(x, k, mode, h=0.8)
    torch.testing.assert_close(y, by_formula(x, k, mode, 0.8), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck(mode):
    x = crand(2, 3, 4, 3, seed=3).requires_grad_()
    k = crand(3, 4, 3, seed=4).requires_grad_()
    if mode == "solve":
        h = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda a, b, t: SpectralStep.apply(a, b, t, mode, False), (x, k, h))
    else:
        assert torch.autograd.gradcheck(lambda a, b: SpectralStep.apply(a, b, None, mode, False), (x, k))


def test_gradcheck_through_the_public_function():
    x = crand(2, 4, 3, seed=5).requires_grad_()
    k = crand(4, 3, seed=6).requires_grad_()
    h = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, t: spectral_step(a, b, "solve", t, backend="reference"), (x, k, h))


def test_errors():
    x, k = crand(2, 3, 4, seed=7), crand(3, 4, seed=8)
    with pytest.raises(ValueError, match="mode='inverse' is not a spectral step"):
        spectral_step(x, k, "inverse")
    with pytest.raises(TypeError, match="complex spectra"):
        spectral_step(x.real, k)
    with pytest.raises(ValueError, match="trailing dimensions"):
        spectral_step(x, crand(3, 5, seed=9))
    with pytest.raises(ValueError, match="h must be > 0"):
        spectral_step(x, k, "solve", h=0)
    with pytest.raises(TypeError, match="h must be a float"):
        spectral_step(x, k, "solve")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_cuda_backend_without_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="backend='cuda' needs a CUDA GPU"):
        spectral_step(crand(2, 3, 4, seed=10, dtype=torch.complex64), crand(3, 4, seed=11, dtype=torch.complex64),
                      backend="cuda")


@pytest.mark.compile
def test_spectral_step_kernel_compiles(nvcc):
    """Compiles kernels/spectral_step.cu with nvcc for the GPUs readers use; CI must not skip this."""
    from effconv_ref.ops import spectral_step as module

    ext = module._kernel()
    assert callable(ext.spectral_step_forward) and callable(ext.spectral_step_backward)
    assert module._kernel() is ext  # cached: a second call does not rebuild


# ---- on a GPU: the fused kernel against the reference, float32 against float64 ----------------

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def rel_err(a, b):
    a, b = a.detach().to(torch.complex128 if b.is_complex() else torch.float64), b.detach()
    return ((a - b).abs().norm() / b.abs().norm()).item()


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("mode", MODES)
def test_fused_kernel_matches_reference_on_gpu(mode):
    seed = torch.seed() % 2**31  # fresh random inputs on every run
    for i, shape in enumerate([(1, 3, 5, 4), (8, 64, 32, 17), (2, 7, 9, 6)]):
        x = crand(*shape, seed=seed + i, dtype=torch.complex64, device="cuda").requires_grad_()
        k = crand(*shape[1:], seed=seed + 100 + i, dtype=torch.complex64, device="cuda").requires_grad_()
        h = torch.tensor(0.37, device="cuda", requires_grad=mode == "solve")
        y = spectral_step(x, k, mode, h=h if mode == "solve" else None, backend="cuda")
        assert torch.isfinite(torch.view_as_real(y)).all()
        x64, k64 = x.detach().cdouble().requires_grad_(), k.detach().cdouble().requires_grad_()
        h64 = h.detach().double().requires_grad_(mode == "solve")
        ref = by_formula(x64, k64, mode, h64)
        assert rel_err(y, ref) < 1e-5, seed
        gy = crand(*shape, seed=seed + 200 + i, dtype=torch.complex64, device="cuda")
        inputs, inputs64 = (x, k, h) if mode == "solve" else (x, k), (x64, k64, h64) if mode == "solve" else (x64, k64)
        grads = torch.autograd.grad(y, inputs, gy)
        refs = torch.autograd.grad(ref, inputs64, gy.cdouble())
        for g, r in zip(grads[:2], refs[:2]):
            assert torch.isfinite(torch.view_as_real(g)).all()
            assert rel_err(g, r) < 1e-5, seed
        if mode == "solve":
            # dL/dh is a sum of terms of either sign; with grad_y = x̂ · (positive weights) the
            # terms share a sign, so the relative error measures the kernel, not cancellation
            gy = (x.detach() * torch.rand(shape, device="cuda")).to(torch.complex64)
            gh = torch.autograd.grad(spectral_step(x, k, mode, h=h, backend="cuda"), h, gy)[0]
            rh = torch.autograd.grad(by_formula(x64, k64, mode, h64), h64, gy.cdouble())[0]
            assert torch.isfinite(gh) and rel_err(gh, rh) < 1e-5, seed


@pytest.mark.cuda
@needs_gpu
def test_operators_on_gpu_match_float64_reference():
    seed = torch.seed() % 2**31
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 16, 33, 20, generator=g)
    weight = torch.randn(16, 1, 3, 3, generator=g)
    h = 0.25
    for backend in ("cuda", "auto"):
        z = implicit_solve(x.cuda(), weight.cuda(), h, backend=backend)
        assert torch.isfinite(z).all() and rel_err(z.cpu(), implicit_solve(x.double(), weight.double(), h)) < 1e-5
        dw = DepthwiseConv2d(16, 3, boundary="periodic", method="fft", backend=backend).cuda()
        dw64 = DepthwiseConv2d(16, 3, boundary="periodic").double()
        dw64.weight.data.copy_(dw.weight.data)
        assert rel_err(dw(x.cuda()).cpu(), dw64(x.double())) < 1e-5
        assert rel_err(dw.adjoint(x.cuda()).cpu(), dw64.adjoint(x.double())) < 1e-5
        circ = CirculantConv2d(16, 3, backend=backend).cuda()
        circ64 = CirculantConv2d(16, 3).double()
        circ64.weight.data.copy_(circ.weight.data)
        assert rel_err(circ(x.cuda()).cpu(), circ64(x.double())) < 1e-5
    # gradients of the implicit solve through the kernel
    xc, wc = x.cuda().requires_grad_(), weight.cuda().requires_grad_()
    hc = torch.tensor(h, device="cuda", requires_grad=True)
    v = torch.randn(x.shape, generator=g)
    grads = torch.autograd.grad((implicit_solve(xc, wc, hc, backend="cuda") * v.cuda()).sum(), (xc, wc))
    x64, w64 = x.double().requires_grad_(), weight.double().requires_grad_()
    refs = torch.autograd.grad((implicit_solve(x64, w64, h) * v.double()).sum(), (x64, w64))
    for a, b in zip(grads, refs):
        assert torch.isfinite(a).all() and rel_err(a.cpu(), b) < 1e-5, seed
