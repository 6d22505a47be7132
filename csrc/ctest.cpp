// pai_fast_ctest: calls the C interface (include/pai_fast/dendritic.h) on a GPU, with no Python, and checks
// Linear forward + backward and Conv2d forward against plain CPU loops in double precision.
// Exit codes: 0 pass, 1 fail, 77 skip (no GPU; the CTest convention).
// Built with -DPF_EMULATE it runs the same checks through the CPU emulator (device memory = host memory).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "pai_fast/dendritic.h"

namespace {

using Vec = std::vector<float>;

#ifdef PF_EMULATE
void* dev_alloc(size_t n) { return std::calloc(n ? n : 1, 1); }
void dev_free(void* p) { std::free(p); }
void to_dev(void* d, const void* h, size_t n) { std::memcpy(d, h, n); }
void to_host(void* h, const void* d, size_t n) { std::memcpy(h, d, n); }
bool sync_ok() { return true; }
#else
void* dev_alloc(size_t n) {
  void* p = nullptr;
  if (cudaMalloc(&p, n ? n : 1) != cudaSuccess) {
    std::fprintf(stderr, "cudaMalloc failed\n");
    std::exit(1);
  }
  return p;
}
void dev_free(void* p) { cudaFree(p); }
void to_dev(void* d, const void* h, size_t n) { cudaMemcpy(d, h, n, cudaMemcpyHostToDevice); }
void to_host(void* h, const void* d, size_t n) { cudaMemcpy(h, d, n, cudaMemcpyDeviceToHost); }
bool sync_ok() {
  const cudaError_t e = cudaDeviceSynchronize();
  if (e != cudaSuccess) std::fprintf(stderr, "CUDA error: %s\n", cudaGetErrorString(e));
  return e == cudaSuccess;
}
#endif

struct Dev {
  float* p;
  size_t n;
  explicit Dev(const Vec& h) : p(static_cast<float*>(dev_alloc(h.size() * 4))), n(h.size()) {
    to_dev(p, h.data(), n * 4);
  }
  explicit Dev(size_t count) : p(static_cast<float*>(dev_alloc(count * 4))), n(count) {}
  ~Dev() { dev_free(p); }
  Vec get() const {
    Vec h(n);
    to_host(h.data(), p, n * 4);
    return h;
  }
};

pf_tensor desc(void* data, std::vector<int64_t> sizes) {
  pf_tensor t{};
  t.data = data;
  t.ndim = static_cast<int32_t>(sizes.size());
  int64_t s = 1;
  for (int i = t.ndim - 1; i >= 0; --i) {
    t.sizes[i] = sizes[static_cast<size_t>(i)];
    t.strides[i] = s;
    s *= sizes[static_cast<size_t>(i)];
  }
  return t;
}

Vec randv(size_t n, std::mt19937& g, float scale) {
  std::normal_distribution<float> nd(0.f, 1.f);
  Vec v(n);
  for (auto& e : v) e = nd(g) * scale;
  return v;
}

double sigm(double s) { return 1.0 / (1.0 + std::exp(-s)); }

int failures = 0;
void compare(const char* name, const Vec& got, const std::vector<double>& ref, double tol) {
  double err = 0, scale = 1e-6;
  for (size_t i = 0; i < ref.size(); ++i) {
    err = std::fmax(err, std::fabs(got[i] - ref[i]));
    scale = std::fmax(scale, std::fabs(ref[i]));
  }
  const bool ok = err <= tol * scale;
  std::printf("%-18s max err %.3e (max |ref| %.3e) %s\n", name, err, scale, ok ? "ok" : "FAIL");
  if (!ok) ++failures;
}

bool check(pf_status s, const char* what) {
  if (s != PF_SUCCESS) {
    std::fprintf(stderr, "%s failed: %s (%s)\n", what, pf_last_error(), pf_status_string(s));
    ++failures;
    return false;
  }
  return true;
}

// Linear: x [M,K], W [N,K], b [N], V [D,N,K], c [D,N], G [D,N], B [D,D,N]; sigmoid.
void test_linear() {
  const int M = 37, K = 45, N = 19, D = 3;
  std::mt19937 gen(1234);
  const Vec x = randv(M * K, gen, 1.f), W = randv(N * K, gen, 0.15f), b = randv(N, gen, 0.5f),
            V = randv(D * N * K, gen, 0.15f), c = randv(D * N, gen, 0.5f), G = randv(D * N, gen, 1.f),
            B = randv(D * D * N, gen, 0.5f), dy = randv(M * N, gen, 1.f);
  // CPU reference, forward and backward (double)
  std::vector<double> y(M * N), h(M * D * N), dx(M * K, 0), dW(N * K, 0), db(N, 0), dV(D * N * K, 0), dc(D * N, 0),
      dG(D * N, 0), dB(D * D * N, 0);
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      double z = b[n], a[D], ds[D];
      for (int k = 0; k < K; ++k) z += double(x[m * K + k]) * W[n * K + k];
      for (int i = 0; i < D; ++i) {
        double s = c[i * N + n];
        for (int k = 0; k < K; ++k) s += double(x[m * K + k]) * V[(i * N + n) * K + k];
        for (int j = 0; j < i; ++j) s += B[(i * D + j) * N + n] * a[j];
        a[i] = sigm(s);
        h[(m * D + i) * N + n] = a[i];
        z += G[i * N + n] * a[i];
      }
      y[m * N + n] = z;
      const double g = dy[m * N + n];
      for (int i = D - 1; i >= 0; --i) {
        double da = G[i * N + n] * g;
        for (int k = i + 1; k < D; ++k) da += B[(k * D + i) * N + n] * ds[k];
        ds[i] = da * a[i] * (1 - a[i]);
      }
      db[n] += g;
      for (int i = 0; i < D; ++i) {
        dG[i * N + n] += g * a[i];
        dc[i * N + n] += ds[i];
        for (int k = i + 1; k < D; ++k) dB[(k * D + i) * N + n] += ds[k] * a[i];
      }
      for (int kk = 0; kk < K; ++kk) {
        dx[m * K + kk] += g * W[n * K + kk];
        dW[n * K + kk] += g * x[m * K + kk];
        for (int i = 0; i < D; ++i) {
          dx[m * K + kk] += ds[i] * V[(i * N + n) * K + kk];
          dV[(i * N + n) * K + kk] += ds[i] * x[m * K + kk];
        }
      }
    }
  Dev dX(x), dWt(W), dbias(b), dVt(V), dct(c), dGt(G), dBt(B), dY(M * N), dH(M * D * N), dDY(dy);
  const pf_tensor tx = desc(dX.p, {M, K}), tw = desc(dWt.p, {N, K}), tb = desc(dbias.p, {N}),
                  tv = desc(dVt.p, {D, N, K}), tc = desc(dct.p, {D, N}), tg = desc(dGt.p, {D, N}),
                  tB = desc(dBt.p, {D, D, N}), ty = desc(dY.p, {M, N}), th = desc(dH.p, {M, D, N});
  if (!check(pf_linear_forward(PF_FLOAT32, PF_ACT_SIGMOID, 0, &tx, &tw, &tb, &tv, &tc, &tg, &tB, &ty, &th, nullptr),
             "pf_linear_forward"))
    return;
  compare("linear y", dY.get(), y, 1e-4);
  compare("linear h", dH.get(), h, 1e-4);
  // Both backwards: the one-pass kernel (which the planner takes for a layer this small) and the split one.
  for (const char* path : {"onepass", "split"}) {
    setenv("PAI_FAST_CUDA_BACKWARD", path, 1);
    Dev gx(M * K), gW(N * K), gb(N), gV(D * N * K), gc(D * N), gG(D * N), gB(D * D * N);
    const pf_tensor tdy = desc(dDY.p, {M, N}), tgx = desc(gx.p, {M, K}), tgW = desc(gW.p, {N, K}),
                    tgb = desc(gb.p, {N}), tgV = desc(gV.p, {D, N, K}), tgc = desc(gc.p, {D, N}),
                    tgG = desc(gG.p, {D, N}), tgB = desc(gB.p, {D, D, N});
    size_t bytes = 0;
    if (!check(pf_linear_backward(PF_FLOAT32, PF_ACT_SIGMOID, 0, &tdy, &tx, &tw, &tv, &tg, &tB, &th, &tgx, &tgW,
                                  &tgb, &tgV, &tgc, &tgG, &tgB, nullptr, &bytes, nullptr),
               "workspace query"))
      return;
    void* ws = dev_alloc(bytes);
    check(pf_linear_backward(PF_FLOAT32, PF_ACT_SIGMOID, 0, &tdy, &tx, &tw, &tv, &tg, &tB, &th, &tgx, &tgW, &tgb,
                             &tgV, &tgc, &tgG, &tgB, ws, &bytes, nullptr),
          "pf_linear_backward");
    if (!sync_ok()) ++failures;
    dev_free(ws);
    const double tol = 1e-4;
    const std::string at = std::string(" (") + path + ")";
    compare(("linear dx" + at).c_str(), gx.get(), dx, tol);
    compare(("linear dweight" + at).c_str(), gW.get(), dW, tol);
    compare(("linear dbias" + at).c_str(), gb.get(), db, tol);
    compare(("linear ddend_w" + at).c_str(), gV.get(), dV, tol);
    compare(("linear ddend_b" + at).c_str(), gc.get(), dc, tol);
    compare(("linear dgate" + at).c_str(), gG.get(), dG, tol);
    compare(("linear dcascade" + at).c_str(), gB.get(), dB, tol);
  }
  unsetenv("PAI_FAST_CUDA_BACKWARD");

  // A bad argument is reported with its name, and nothing is launched.
  const pf_tensor bad = desc(dGt.p, {D, N + 1});
  const pf_status s =
      pf_linear_forward(PF_FLOAT32, PF_ACT_SIGMOID, 0, &tx, &tw, &tb, &tv, &tc, &bad, &tB, &ty, &th, nullptr);
  const bool named = s == PF_ERROR_INVALID_ARGUMENT && std::strstr(pf_last_error(), "'gate'") != nullptr;
  std::printf("%-18s %s (%s)\n", "bad gate shape", named ? "ok" : "FAIL", pf_last_error());
  if (!named) ++failures;
}

// Conv2d: x [B,C,H,W], weight [O,C,KH,KW], stride 2x1, padding 1x0, dilation 1x2; tanh; D=2, no bias.
void test_conv2d() {
  const int Bn = 2, C = 3, H = 9, Wd = 8, O = 5, KH = 3, KW = 2, D = 2;
  const int sh = 2, sw = 1, ph = 1, pw = 0, dh = 1, dw = 2;
  const int OH = (H + 2 * ph - dh * (KH - 1) - 1) / sh + 1, OW = (Wd + 2 * pw - dw * (KW - 1) - 1) / sw + 1;
  std::mt19937 gen(99);
  const int KC = C * KH * KW;
  const Vec x = randv(Bn * C * H * Wd, gen, 1.f), W = randv(O * KC, gen, 0.3f), V = randv(D * O * KC, gen, 0.3f),
            G = randv(D * O, gen, 1.f), Bc = randv(D * D * O, gen, 0.5f);
  std::vector<double> y(Bn * O * OH * OW);
  for (int b = 0; b < Bn; ++b)
    for (int o = 0; o < O; ++o)
      for (int oh = 0; oh < OH; ++oh)
        for (int ow = 0; ow < OW; ++ow) {
          double z[1 + D] = {0};
          for (int r = 0; r <= D; ++r)
            for (int ci = 0; ci < C; ++ci)
              for (int kh = 0; kh < KH; ++kh)
                for (int kw = 0; kw < KW; ++kw) {
                  const int ih = oh * sh - ph + kh * dh, iw = ow * sw - pw + kw * dw;
                  if (ih < 0 || ih >= H || iw < 0 || iw >= Wd) continue;
                  const float wv = r == 0 ? W[((o * C + ci) * KH + kh) * KW + kw]
                                          : V[(((r - 1) * O + o) * C + ci) * KH * KW + kh * KW + kw];
                  z[r] += double(x[((b * C + ci) * H + ih) * Wd + iw]) * wv;
                }
          double a[D], out = z[0];
          for (int i = 0; i < D; ++i) {
            double s = z[1 + i];
            for (int j = 0; j < i; ++j) s += Bc[(i * D + j) * O + o] * a[j];
            a[i] = std::tanh(s);
            out += G[i * O + o] * a[i];
          }
          y[((b * O + o) * OH + oh) * OW + ow] = out;
        }
  Dev dx(x), dW(W), dV(V), dG(G), dB(Bc), dy(y.size());
  const pf_tensor tx = desc(dx.p, {Bn, C, H, Wd}), tw = desc(dW.p, {O, C, KH, KW}), tv = desc(dV.p, {D, O, C, KH, KW}),
                  tg = desc(dG.p, {D, O}), tB = desc(dB.p, {D, D, O}), ty = desc(dy.p, {Bn, O, OH, OW});
  pf_conv_geometry geo{};
  geo.nd = 2;
  geo.stride[0] = sh;
  geo.stride[1] = sw;
  geo.padding[0] = ph;
  geo.padding[1] = pw;
  geo.dilation[0] = dh;
  geo.dilation[1] = dw;
  if (!check(pf_conv_forward(PF_FLOAT32, PF_ACT_TANH, 0, &geo, &tx, &tw, nullptr, &tv, nullptr, &tg, &tB, &ty, nullptr,
                             nullptr),
             "pf_conv_forward"))
    return;
  if (!sync_ok()) ++failures;
  compare("conv2d y", dy.get(), y, 1e-4);
}

}  // namespace

int main() {
#ifndef PF_EMULATE
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::printf("pai_fast_ctest: SKIP (no CUDA GPU)\n");
    return 77;
  }
#endif
  std::printf("pai_fast_ctest: %s\n", pf_build_info());
  test_linear();
  test_conv2d();
  std::printf("pai_fast_ctest: %s\n", failures ? "FAILED" : "PASSED");
  return failures ? 1 : 0;
}
