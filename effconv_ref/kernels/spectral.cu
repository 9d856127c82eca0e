// Pointwise products in the Fourier domain: the heart of every FFT convolution.
//
// spectral_multiply(x, k, conj_k):  y[b, n] = x[b, n] * k[n]   (or * conj(k[n]))
//   x: complex64, shape (B, N), contiguous - B stacked spectra (batch), N = channels x frequencies
//   k: complex64, shape (N),    contiguous - the kernel's symbol, shared by the batch
// conj_k = true gives the adjoint, used by the backward pass: dL/dx = dL/dy * conj(k).

#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>

__global__ void spectral_multiply_kernel(const float2* __restrict__ x,
                                         const float2* __restrict__ k,
                                         float2* __restrict__ y,
                                         int64_t n, int64_t total, bool conj_k) {
    const int64_t stride = (int64_t)blockDim.x * gridDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        const float2 a = x[i];
        float2 b = k[i % n];
        if (conj_k) b.y = -b.y;
        y[i] = make_float2(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x);
    }
}

torch::Tensor spectral_multiply(torch::Tensor x, torch::Tensor k, bool conj_k) {
    TORCH_CHECK(x.is_cuda() && k.is_cuda(), "spectral_multiply: x and k must be CUDA tensors");
    TORCH_CHECK(x.scalar_type() == torch::kComplexFloat && k.scalar_type() == torch::kComplexFloat,
                "spectral_multiply: x and k must be complex64");
    TORCH_CHECK(x.dim() == 2 && k.dim() == 1 && x.size(1) == k.size(0),
                "spectral_multiply: x must be (B, N) and k (N)");
    x = x.contiguous();
    k = k.contiguous();
    auto y = torch::empty_like(x);
    const int64_t total = x.numel();
    if (total == 0) return y;
    const int threads = 256;
    const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 65535);
    spectral_multiply_kernel<<<blocks, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        reinterpret_cast<const float2*>(x.data_ptr<c10::complex<float>>()),
        reinterpret_cast<const float2*>(k.data_ptr<c10::complex<float>>()),
        reinterpret_cast<float2*>(y.data_ptr<c10::complex<float>>()),
        k.numel(), total, conj_k);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return y;
}
