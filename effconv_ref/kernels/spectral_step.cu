// The spectral step of an FFT convolution, its adjoint, and the implicit (I + h K^T K)^-1 solve.
//
// After torch.fft every channel's spectrum is multiplied, frequency by frequency, by a factor
// that depends only on the kernel's symbol k (its eigenvalue at that frequency):
//
//   mode 0 (multiply):  y[b, n] = x[b, n] * k[n]                    K x      (eq. 10)
//   mode 1 (adjoint):   y[b, n] = x[b, n] * conj(k[n])              K^T x
//   mode 2 (solve):     y[b, n] = x[b, n] / (1 + h |k[n]|^2)        (I + h K^T K)^-1 x  (sec. 3.2.2)
//
//   x: complex64, shape (B, N), contiguous - B stacked spectra (batch), N = channels x frequencies
//   k: complex64, shape (N),    contiguous - the symbol, shared by the batch
//   h: float32,   shape (1),    on the GPU - the time step (read only by mode 2; never copied to the host)
//
// spectral_step_forward is one pass over the spectrum. spectral_step_backward is one pass over
// (grad_y, x) that gives all three gradients, in PyTorch's convention for complex gradients:
//
//   mode 0: dx = g conj(k)     dk = sum_b g conj(x)
//   mode 1: dx = g k           dk = sum_b conj(g) x
//   mode 2: dx = g s           dk = -2 h s^2 k sum_b Re(g conj(x))      s = 1 / (1 + h |k|^2)
//                              dh = -sum_n |k|^2 s^2 sum_b Re(g conj(x))
//
// Each backward thread owns one frequency n and walks the batch, so dk needs no atomics; sums
// over the batch are accumulated in double. dh is returned per frequency (double) and summed
// by the caller.

#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>

namespace {

__device__ __forceinline__ float2 cmul(float2 a, float2 b) {
    return make_float2(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x);
}

__device__ __forceinline__ float2 cconj(float2 a) { return make_float2(a.x, -a.y); }

__device__ __forceinline__ float2 apply_step(float2 a, float2 s, float h, int mode) {
    if (mode == 0) return cmul(a, s);
    if (mode == 1) return cmul(a, cconj(s));
    const float inv = 1.0f / (1.0f + h * (s.x * s.x + s.y * s.y));
    return make_float2(a.x * inv, a.y * inv);
}

__global__ void spectral_step_forward_kernel(const float2* __restrict__ x,
                                             const float2* __restrict__ k,
                                             const float* __restrict__ h,
                                             float2* __restrict__ y,
                                             int64_t n, int64_t total, int mode) {
    const float step = (mode == 2) ? h[0] : 0.0f;
    const int64_t stride = (int64_t)blockDim.x * gridDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        y[i] = apply_step(x[i], k[i % n], step, mode);
    }
}

__global__ void spectral_step_backward_kernel(const float2* __restrict__ g,
                                              const float2* __restrict__ x,
                                              const float2* __restrict__ k,
                                              const float* __restrict__ h,
                                              float2* __restrict__ grad_x,
                                              float2* __restrict__ grad_k,
                                              double* __restrict__ grad_h_terms,
                                              int64_t batch, int64_t n, int mode,
                                              bool need_x, bool need_k, bool need_h) {
    const float step = (mode == 2) ? h[0] : 0.0f;
    // the adjoint of each step, applied to grad_y: multiply <-> adjoint, solve is self-adjoint
    const int back_mode = (mode == 0) ? 1 : (mode == 1 ? 0 : 2);
    const int64_t stride = (int64_t)blockDim.x * gridDim.x;
    for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < n; j += stride) {
        const float2 s = k[j];
        double re = 0.0, im = 0.0;  // sum_b g conj(x)
        for (int64_t b = 0; b < batch; ++b) {
            const int64_t i = b * n + j;
            const float2 gi = g[i];
            if (need_x) grad_x[i] = apply_step(gi, s, step, back_mode);
            if (need_k || need_h) {
                const float2 xi = x[i];
                re += (double)gi.x * xi.x + (double)gi.y * xi.y;
                im += (double)gi.y * xi.x - (double)gi.x * xi.y;
            }
        }
        if (mode == 0) {
            if (need_k) grad_k[j] = make_float2((float)re, (float)im);
        } else if (mode == 1) {
            if (need_k) grad_k[j] = make_float2((float)re, (float)-im);
        } else {
            const double a = (double)s.x * s.x + (double)s.y * s.y;
            const double inv = 1.0 / (1.0 + (double)step * a);
            const double common = re * inv * inv;  // Re(sum_b g conj(x)) s^2
            if (need_k) {
                const double f = -2.0 * (double)step * common;
                grad_k[j] = make_float2((float)(f * s.x), (float)(f * s.y));
            }
            if (need_h) grad_h_terms[j] = -a * common;
        }
    }
}

void check_inputs(const torch::Tensor& x, const torch::Tensor& k, const torch::Tensor& h,
                  const char* name) {
    TORCH_CHECK(x.is_cuda() && k.is_cuda() && h.is_cuda(), name, ": x, k and h must be CUDA tensors");
    TORCH_CHECK(x.scalar_type() == torch::kComplexFloat && k.scalar_type() == torch::kComplexFloat,
                name, ": x and k must be complex64");
    TORCH_CHECK(h.scalar_type() == torch::kFloat && h.numel() == 1, name, ": h must be one float32");
    TORCH_CHECK(x.dim() == 2 && k.dim() == 1 && x.size(1) == k.size(0),
                name, ": x must be (B, N) and k (N)");
}

int64_t blocks_for(int64_t work, int threads) {
    return std::max<int64_t>(1, std::min<int64_t>((work + threads - 1) / threads, 65535));
}

}  // namespace

torch::Tensor spectral_step_forward(torch::Tensor x, torch::Tensor k, torch::Tensor h, int64_t mode) {
    check_inputs(x, k, h, "spectral_step_forward");
    TORCH_CHECK(mode >= 0 && mode <= 2, "spectral_step_forward: mode must be 0, 1 or 2");
    x = x.contiguous();
    k = k.contiguous();
    h = h.contiguous();
    auto y = torch::empty_like(x);
    const int64_t total = x.numel();
    if (total == 0) return y;
    const int threads = 256;
    spectral_step_forward_kernel<<<blocks_for(total, threads), threads, 0,
                                   c10::cuda::getCurrentCUDAStream()>>>(
        reinterpret_cast<const float2*>(x.data_ptr<c10::complex<float>>()),
        reinterpret_cast<const float2*>(k.data_ptr<c10::complex<float>>()),
        h.data_ptr<float>(),
        reinterpret_cast<float2*>(y.data_ptr<c10::complex<float>>()),
        k.numel(), total, (int)mode);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return y;
}

std::vector<torch::Tensor> spectral_step_backward(torch::Tensor g, torch::Tensor x, torch::Tensor k,
                                                  torch::Tensor h, int64_t mode,
                                                  bool need_x, bool need_k, bool need_h) {
    check_inputs(x, k, h, "spectral_step_backward");
    TORCH_CHECK(g.is_cuda() && g.scalar_type() == torch::kComplexFloat && g.sizes() == x.sizes(),
                "spectral_step_backward: grad_y must be complex64 on the GPU, shaped like x");
    TORCH_CHECK(mode >= 0 && mode <= 2, "spectral_step_backward: mode must be 0, 1 or 2");
    need_h = need_h && mode == 2;
    g = g.contiguous();
    x = x.contiguous();
    k = k.contiguous();
    h = h.contiguous();
    auto grad_x = need_x ? torch::empty_like(x) : torch::empty({0}, x.options());
    auto grad_k = need_k ? torch::empty_like(k) : torch::empty({0}, k.options());
    auto grad_h_terms = need_h ? torch::empty({k.numel()}, k.options().dtype(torch::kDouble))
                               : torch::empty({0}, k.options().dtype(torch::kDouble));
    const int64_t n = k.numel();
    if (n == 0 || x.size(0) == 0) {
        if (need_k) grad_k.zero_();
        if (need_h) grad_h_terms.zero_();
        return {grad_x, grad_k, grad_h_terms};
    }
    const int threads = 256;
    spectral_step_backward_kernel<<<blocks_for(n, threads), threads, 0,
                                    c10::cuda::getCurrentCUDAStream()>>>(
        reinterpret_cast<const float2*>(g.data_ptr<c10::complex<float>>()),
        reinterpret_cast<const float2*>(x.data_ptr<c10::complex<float>>()),
        reinterpret_cast<const float2*>(k.data_ptr<c10::complex<float>>()),
        h.data_ptr<float>(),
        need_x ? reinterpret_cast<float2*>(grad_x.data_ptr<c10::complex<float>>()) : nullptr,
        need_k ? reinterpret_cast<float2*>(grad_k.data_ptr<c10::complex<float>>()) : nullptr,
        need_h ? grad_h_terms.data_ptr<double>() : nullptr,
        x.size(0), n, (int)mode, need_x, need_k, need_h);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {grad_x, grad_k, grad_h_terms};
}
