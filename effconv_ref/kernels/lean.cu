// The lean convolution (eqs. 3-4 of Ephrath et al., LeanResNet) in one fused pass.
//
//   y[b, o, p, q] = bias[o] + sum_i P[o, i] x[b, i, ps, qs]                      (1x1 part, eq. 3)
//                 + [o < m] ( c1[o] x[b, o, ps-1, qs] + c2[o] x[b, o, ps, qs-1]  (eq. 4: up, left,
//                           + c3[o] x[b, o, ps, qs+1] + c4[o] x[b, o, ps+1, qs] )        right, down)
//
//   x:     (B, Cin, H, W)      float32 / float16 / bfloat16, contiguous; zero outside the image
//   P:     (Cout, Cin)         float32 (the 1x1 weight; its diagonal is the centre tap of eq. 4)
//   taps:  (m, 4)              float32, m = min(Cin, Cout), columns up, left, right, down
//   y:     (B, Cout, Ho, Wo)   Ho = (H - 1) / s + 1, Wo = (W - 1) / s + 1, s in {1, 2}
//
// One kernel template, lean_tile_kernel, does all the heavy passes. It is a tiled GEMM
// out[M x pixels] = A[M x K] . src[K x pixels] over a tile of BM output channels times a
// TH x TW block of pixels of one image, with the K (reduction) channels walked in chunks of BK.
// Per chunk the block stages in shared memory
//
//   As[BK][BM]  the chunk of A (read from `wk`, A transposed: a (K, M) row-major matrix),
//   Bs[BK][BN]  the GEMM operand: the pixel centres of the tile for each chunk channel,
//   Ps[BK][PP]  for the chunk channels that also carry a stencil in this tile (channel c with
//               m0 <= c < m0 + BM and c < m): the whole input patch of the tile plus a
//               one-pixel halo. Their centres are copied from Ps into Bs, so every input
//               value a block needs is read from global memory once.
//
// The 1x1 part is the GEMM on Bs; the stencil of output channel c is added from Ps in the
// chunk that holds input channel c (the paper's point (1): one memory read for both terms).
// Each thread owns a 4 x 4 micro-tile (4 channels x 4 neighbouring pixels of one row) and
// accumulates in float. Two tile shapes: BM = 64 channels x 8 x 8 pixels (BK = 16) and, for
// narrow layers (M <= 16), BM = 16 channels x 16 x 16 pixels (BK = 8).
//
// MODE 0 is the forward pass. With A = P^T and the taps flipped (down, right, left, up) it is
// also the input gradient for stride 1 (the adjoint of a 4-point stencil is the point-mirrored
// stencil). MODE 1 is the input gradient for stride 2: the GEMM P^T g runs over the coarse grid
// of g and lands on the even pixels (2p, 2q) of grad_x; the stencil adjoint scatters onto the
// odd pixels, which the same thread writes:
//
//   gx[2p+1, 2q] = c4 g[p, q] + c1 g[p+1, q]      gx[2p, 2q+1] = c3 g[p, q] + c2 g[p, q+1]
//   gx[2p+1, 2q+1] = 0                            (for input channels i < m; 0 for the others)
//
// so every pixel of grad_x is written exactly once, without atomics.
//
// lean_grad_stencil: dL/dc_k[o] = sum_{b,p,q} g[b,o,p,q] x[b,o, ps+dy_k, qs+dx_k], a reduction
// over (batch, pixels) split across blocks; partial sums per block, summed on the host side.
// (dL/dP is a batched GEMM done with cuBLAS through torch, see ops/lean_conv.py.)

#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>

#include <limits>

namespace {

constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ float load_float(const T* p) { return static_cast<float>(*p); }

template <typename scalar_t, int MODE, int S, int BM, int TH, int TW, int BK>
__global__ void __launch_bounds__(kThreads)
lean_tile_kernel(const scalar_t* __restrict__ src,  // (B, K, Hs, Ws)
                 const float* __restrict__ wk,      // (K, M): wk[k * M + c] = A[c][k]
                 const float* __restrict__ taps,    // (n_st, 4): up, left, right, down
                 const float* __restrict__ bias,    // (M) or nullptr
                 scalar_t* __restrict__ dst,        // MODE 0: (B, M, Ho, Wo); MODE 1: (B, M, Hd, Wd)
                 int K, int M, int n_st, int Hs, int Ws, int Ho, int Wo, int Hd, int Wd,
                 int tiles_w, int tiles_per_image) {
    constexpr int BN = TH * TW;             // pixels per tile
    constexpr int TX = BN / 4;              // threads along pixels (4 pixels each)
    constexpr int TY = BM / 4;              // threads along channels (4 channels each)
    static_assert(TX * TY == kThreads, "a 4 x 4 micro-tile per thread");
    static_assert(TW % 4 == 0, "a thread's 4 pixels lie in one row");
    constexpr int PH = (TH - 1) * S + 3;    // patch rows: the tile's input rows plus a halo
    constexpr int PW = (TW - 1) * S + 3;
    constexpr int PP = PH * PW;

    __shared__ __align__(16) float As[BK][BM];
    __shared__ __align__(16) float Bs[BK][BN];
    __shared__ float Ps[BK][PP];

    const int tile = blockIdx.x % tiles_per_image;
    const int64_t b = blockIdx.x / tiles_per_image;
    const int p0 = (tile / tiles_w) * TH;
    const int q0 = (tile % tiles_w) * TW;
    const int m0 = blockIdx.y * BM;
    const int tid = threadIdx.x;
    const int tx = tid % TX;
    const int ty = tid / TX;

    const int64_t src_plane = (int64_t)Hs * Ws;
    const scalar_t* __restrict__ src_b = src + b * K * src_plane;
    // channels of this tile that carry a stencil: [st_lo, st_hi)
    const int st_lo = m0;
    const int st_hi = min(m0 + BM, n_st);

    float acc[4][4];
    float acc_down[4][4];   // MODE 1: gx[2p+1, 2q]
    float acc_right[4][4];  // MODE 1: gx[2p, 2q+1]
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = acc_down[i][j] = acc_right[i][j] = 0.0f;
    }

    for (int k0 = 0; k0 < K; k0 += BK) {
        // chunk channels k0 + kk with ks <= kk < ke carry a stencil in this tile (maybe none)
        const int ks = max(st_lo, k0) - k0;
        const int ke = min(st_hi, k0 + BK) - k0;
        const bool has_stencil = ks < ke;

        for (int e = tid; e < BK * BM; e += kThreads) {
            const int kk = e / BM, cc = e % BM;
            const int k = k0 + kk, c = m0 + cc;
            As[kk][cc] = (k < K && c < M) ? wk[(int64_t)k * M + c] : 0.0f;
        }
        for (int e = tid; e < BK * BN; e += kThreads) {
            const int kk = e / BN, n = e % BN;
            if (kk >= ks && kk < ke) continue;  // taken from the patch below
            const int k = k0 + kk, p = p0 + n / TW, q = q0 + n % TW;
            float v = 0.0f;
            if (k < K && p < Ho && q < Wo) {
                v = load_float(src_b + k * src_plane + (int64_t)(p * S) * Ws + q * S);
            }
            Bs[kk][n] = v;
        }
        if (has_stencil) {
            const int r0 = p0 * S - 1, c0 = q0 * S - 1;
            for (int e = ks * PP + tid; e < ke * PP; e += kThreads) {
                const int kk = e / PP, rc = e % PP;
                const int h = r0 + rc / PW, w = c0 + rc % PW;
                float v = 0.0f;  // zero padding outside the image
                if (h >= 0 && h < Hs && w >= 0 && w < Ws) {
                    v = load_float(src_b + (k0 + kk) * src_plane + (int64_t)h * Ws + w);
                }
                Ps[kk][rc] = v;
            }
        }
        __syncthreads();
        if (has_stencil) {
            for (int e = ks * BN + tid; e < ke * BN; e += kThreads) {
                const int kk = e / BN, n = e % BN;
                Bs[kk][n] = Ps[kk][(1 + (n / TW) * S) * PW + 1 + (n % TW) * S];
            }
            __syncthreads();
        }

        // the 1x1 part: a BK-deep rank update of the 4 x 4 micro-tile
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            const float4 a = *reinterpret_cast<const float4*>(&As[kk][ty * 4]);
            const float4 v = *reinterpret_cast<const float4*>(&Bs[kk][tx * 4]);
            const float av[4] = {a.x, a.y, a.z, a.w};
            const float bv[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int i = 0; i < 4; ++i) {
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
            }
        }

        // the stencil of output channel c, from the patch of input channel c (this chunk)
        if (has_stencil) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int c = m0 + ty * 4 + i;
                const int kk = c - k0;
                if (kk < ks || kk >= ke) continue;
                const float up = taps[c * 4 + 0], left = taps[c * 4 + 1];
                const float right = taps[c * 4 + 2], down = taps[c * 4 + 3];
                const float* __restrict__ patch = Ps[kk];
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const int n = tx * 4 + j;
                    const int at_centre = (1 + (n / TW) * S) * PW + 1 + (n % TW) * S;
                    if constexpr (MODE == 0) {
                        acc[i][j] += up * patch[at_centre - PW] + left * patch[at_centre - 1] +
                                     right * patch[at_centre + 1] + down * patch[at_centre + PW];
                    } else {
                        acc_down[i][j] = down * patch[at_centre] + up * patch[at_centre + PW];
                        acc_right[i][j] = right * patch[at_centre] + left * patch[at_centre + 1];
                    }
                }
            }
        }
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int c = m0 + ty * 4 + i;
        if (c >= M) continue;
        const float shift = (bias != nullptr) ? bias[c] : 0.0f;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int n = tx * 4 + j;
            const int p = p0 + n / TW, q = q0 + n % TW;
            if (p >= Ho || q >= Wo) continue;
            if constexpr (MODE == 0) {
                dst[((b * M + c) * Ho + p) * (int64_t)Wo + q] = static_cast<scalar_t>(acc[i][j] + shift);
            } else {
                scalar_t* plane = dst + (b * M + c) * (int64_t)Hd * Wd;
                const int h = 2 * p, w = 2 * q;
                const bool down_in = h + 1 < Hd, right_in = w + 1 < Wd;
                plane[(int64_t)h * Wd + w] = static_cast<scalar_t>(acc[i][j]);
                if (down_in) plane[(int64_t)(h + 1) * Wd + w] = static_cast<scalar_t>(acc_down[i][j]);
                if (right_in) plane[(int64_t)h * Wd + w + 1] = static_cast<scalar_t>(acc_right[i][j]);
                if (down_in && right_in) plane[(int64_t)(h + 1) * Wd + w + 1] = static_cast<scalar_t>(0.0f);
            }
        }
    }
}

template <typename scalar_t, int S>
__global__ void __launch_bounds__(kThreads)
lean_grad_stencil_kernel(const scalar_t* __restrict__ g,  // (B, Cout, Ho, Wo)
                         const scalar_t* __restrict__ x,  // (B, Cin, H, W)
                         float* __restrict__ partial,     // (m, splits, 4)
                         int64_t batch, int Cout, int Cin, int H, int W, int Ho, int Wo) {
    const int c = blockIdx.x;
    const int split = blockIdx.y, splits = gridDim.y;
    const int64_t per_image = (int64_t)Ho * Wo;
    const int64_t total = batch * per_image;
    float sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t e = (int64_t)split * kThreads + threadIdx.x; e < total; e += (int64_t)splits * kThreads) {
        const int64_t bb = e / per_image;
        const int n = (int)(e % per_image);
        const int p = n / Wo, q = n % Wo;
        const float gv = load_float(g + (bb * Cout + c) * per_image + n);
        const scalar_t* __restrict__ xc = x + (bb * Cin + c) * (int64_t)H * W;
        const int h = p * S, w = q * S;
        if (h > 0) sum[0] += gv * load_float(xc + (int64_t)(h - 1) * W + w);
        if (w > 0) sum[1] += gv * load_float(xc + (int64_t)h * W + w - 1);
        if (w + 1 < W) sum[2] += gv * load_float(xc + (int64_t)h * W + w + 1);
        if (h + 1 < H) sum[3] += gv * load_float(xc + (int64_t)(h + 1) * W + w);
    }
    __shared__ float warp_sums[kThreads / 32][4];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        float v = sum[k];
        for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
        if (lane == 0) warp_sums[warp][k] = v;
    }
    __syncthreads();
    if (threadIdx.x < 4) {
        float v = 0.0f;
        for (int w = 0; w < kThreads / 32; ++w) v += warp_sums[w][threadIdx.x];
        partial[((int64_t)c * splits + split) * 4 + threadIdx.x] = v;
    }
}

// float32, float16 and bfloat16 activations; everything is accumulated in float
template <typename F>
void dispatch_dtype(at::ScalarType dtype, const char* name, F&& f) {
    switch (dtype) {
        case at::kFloat: f(float{}); break;
        case at::kHalf: f(c10::Half{}); break;
        case at::kBFloat16: f(c10::BFloat16{}); break;
        default:
            TORCH_CHECK(false, name, ": supported dtypes are float32, float16 and bfloat16; got ", dtype);
    }
}

template <typename scalar_t, int MODE, int S, int BM, int TH, int TW, int BK>
void launch_tile(const torch::Tensor& src, const torch::Tensor& wk, const torch::Tensor& taps,
                 const torch::Tensor& bias, torch::Tensor& dst, int K, int M, int Ho, int Wo) {
    const int64_t batch = src.size(0);
    const int tiles_h = (Ho + TH - 1) / TH, tiles_w = (Wo + TW - 1) / TW;
    const int64_t tiles = (int64_t)tiles_h * tiles_w;
    const int64_t blocks_x = batch * tiles;
    const int64_t blocks_y = (M + BM - 1) / BM;
    TORCH_CHECK(blocks_x <= std::numeric_limits<int>::max() && blocks_y <= 65535,
                "lean_conv: the problem is too large for one launch (batch x tiles = ", blocks_x,
                ", channel tiles = ", blocks_y, ")");
    const dim3 grid((unsigned)blocks_x, (unsigned)blocks_y);
    lean_tile_kernel<scalar_t, MODE, S, BM, TH, TW, BK>
        <<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            src.data_ptr<scalar_t>(), wk.data_ptr<float>(), taps.data_ptr<float>(),
            bias.numel() ? bias.data_ptr<float>() : nullptr, dst.data_ptr<scalar_t>(),
            K, M, (int)taps.size(0), (int)src.size(2), (int)src.size(3), Ho, Wo,
            (int)dst.size(2), (int)dst.size(3), tiles_w, (int)tiles);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// wide layers: 64 channels x 8 x 8 pixels; narrow layers (M <= 16): 16 channels x 16 x 16 pixels
template <typename scalar_t, int MODE, int S>
void launch_tiles(const torch::Tensor& src, const torch::Tensor& wk, const torch::Tensor& taps,
                  const torch::Tensor& bias, torch::Tensor& dst, int K, int M, int Ho, int Wo) {
    if (M <= 16) {
        launch_tile<scalar_t, MODE, S, 16, 16, 16, 8>(src, wk, taps, bias, dst, K, M, Ho, Wo);
    } else {
        launch_tile<scalar_t, MODE, S, 64, 8, 8, 16>(src, wk, taps, bias, dst, K, M, Ho, Wo);
    }
}

void check_weights(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& taps,
                   int64_t cout, int64_t cin, const char* name) {
    TORCH_CHECK(x.is_cuda() && weight.is_cuda() && taps.is_cuda(), name, ": all tensors must be on the GPU");
    TORCH_CHECK(x.dim() == 4, name, ": the activations must be 4-D (B, C, H, W)");
    TORCH_CHECK(weight.scalar_type() == at::kFloat && taps.scalar_type() == at::kFloat,
                name, ": the weights must be float32");
    TORCH_CHECK(weight.dim() == 2 && weight.size(0) == cout && weight.size(1) == cin,
                name, ": the pointwise weight must be (Cout, Cin)");
    TORCH_CHECK(taps.dim() == 2 && taps.size(0) == std::min(cin, cout) && taps.size(1) == 4,
                name, ": the stencil must be (min(Cin, Cout), 4)");
    TORCH_CHECK((int64_t)x.size(2) * x.size(3) <= std::numeric_limits<int>::max(),
                name, ": an image plane must have fewer than 2^31 pixels");
}

}  // namespace

torch::Tensor lean_forward(torch::Tensor x, torch::Tensor weight, torch::Tensor taps, torch::Tensor bias,
                           int64_t stride) {
    TORCH_CHECK(stride == 1 || stride == 2, "lean_forward: stride must be 1 or 2");
    const int64_t cin = x.size(1), cout = weight.size(0);
    check_weights(x, weight, taps, cout, cin, "lean_forward");
    TORCH_CHECK(bias.numel() == 0 || (bias.is_cuda() && bias.scalar_type() == at::kFloat && bias.numel() == cout),
                "lean_forward: bias must be empty or (Cout) float32 on the GPU");
    x = x.contiguous();
    const auto wk = weight.t().contiguous();  // (Cin, Cout): A = P, read K-major
    taps = taps.contiguous();
    bias = bias.contiguous();
    const int64_t H = x.size(2), W = x.size(3);
    const int64_t Ho = (H - 1) / stride + 1, Wo = (W - 1) / stride + 1;
    auto y = torch::empty({x.size(0), cout, Ho, Wo}, x.options());
    if (y.numel() == 0) return y;
    dispatch_dtype(x.scalar_type(), "lean_forward", [&](auto tag) {
        using scalar_t = decltype(tag);
        if (stride == 1) {
            launch_tiles<scalar_t, 0, 1>(x, wk, taps, bias, y, (int)cin, (int)cout, (int)Ho, (int)Wo);
        } else {
            launch_tiles<scalar_t, 0, 2>(x, wk, taps, bias, y, (int)cin, (int)cout, (int)Ho, (int)Wo);
        }
    });
    return y;
}

torch::Tensor lean_backward_input(torch::Tensor g, torch::Tensor weight, torch::Tensor taps, int64_t stride,
                                  int64_t height, int64_t width) {
    TORCH_CHECK(stride == 1 || stride == 2, "lean_backward_input: stride must be 1 or 2");
    const int64_t cout = g.size(1), cin = weight.size(1);
    check_weights(g, weight, taps, cout, cin, "lean_backward_input");
    const int64_t Ho = (height - 1) / stride + 1, Wo = (width - 1) / stride + 1;
    TORCH_CHECK(g.size(2) == Ho && g.size(3) == Wo, "lean_backward_input: grad_y has the wrong spatial size");
    g = g.contiguous();
    const auto wk = weight.contiguous();  // (Cout, Cin): A = P^T, read K-major
    const auto no_bias = torch::empty({0}, weight.options());
    auto gx = torch::empty({g.size(0), cin, height, width}, g.options());
    if (gx.numel() == 0) return gx;
    dispatch_dtype(g.scalar_type(), "lean_backward_input", [&](auto tag) {
        using scalar_t = decltype(tag);
        if (stride == 1) {
            // the adjoint stencil is the mirrored one: (up, left, right, down) <- (down, right, left, up)
            const auto mirrored = taps.flip({1}).contiguous();
            launch_tiles<scalar_t, 0, 1>(g, wk, mirrored, no_bias, gx, (int)cout, (int)cin, (int)Ho, (int)Wo);
        } else {
            const auto t = taps.contiguous();
            launch_tiles<scalar_t, 1, 1>(g, wk, t, no_bias, gx, (int)cout, (int)cin, (int)Ho, (int)Wo);
        }
    });
    return gx;
}

torch::Tensor lean_grad_stencil(torch::Tensor g, torch::Tensor x, int64_t stride, int64_t m) {
    TORCH_CHECK(stride == 1 || stride == 2, "lean_grad_stencil: stride must be 1 or 2");
    TORCH_CHECK(g.is_cuda() && x.is_cuda() && g.dim() == 4 && x.dim() == 4 && g.scalar_type() == x.scalar_type(),
                "lean_grad_stencil: g and x must be 4-D GPU tensors of one dtype");
    TORCH_CHECK(m >= 0 && m <= g.size(1) && m <= x.size(1), "lean_grad_stencil: m must be <= both channel counts");
    g = g.contiguous();
    x = x.contiguous();
    const int64_t batch = x.size(0), H = x.size(2), W = x.size(3);
    const int64_t Ho = g.size(2), Wo = g.size(3);
    TORCH_CHECK(Ho == (H - 1) / stride + 1 && Wo == (W - 1) / stride + 1, "lean_grad_stencil: sizes do not match");
    const int64_t work = batch * Ho * Wo;
    // enough blocks to fill the GPU, about 16 pixels per thread each
    const int64_t splits = std::max<int64_t>(1, std::min<int64_t>(1024, work / (kThreads * 16)));
    auto partial = torch::zeros({m, splits, 4}, x.options().dtype(at::kFloat));
    if (m == 0 || work == 0) return partial.sum({1});
    dispatch_dtype(x.scalar_type(), "lean_grad_stencil", [&](auto tag) {
        using scalar_t = decltype(tag);
        const dim3 grid((unsigned)m, (unsigned)splits);
        if (stride == 1) {
            lean_grad_stencil_kernel<scalar_t, 1><<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
                g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), partial.data_ptr<float>(), batch,
                (int)g.size(1), (int)x.size(1), (int)H, (int)W, (int)Ho, (int)Wo);
        } else {
            lean_grad_stencil_kernel<scalar_t, 2><<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
                g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), partial.data_ptr<float>(), batch,
                (int)g.size(1), (int)x.size(1), (int)H, (int)W, (int)Ho, (int)Wo);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return partial.to(at::kDouble).sum({1}).to(at::kFloat);
}
