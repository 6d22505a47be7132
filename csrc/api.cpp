// Host side of the C interface (include/pai_fast/dendritic.h): argument checks with messages that name
// the argument, what was expected and what came; the mapping of Linear and Conv1d/2d/3d onto one
// geometry; launch planning (tile counts, split-K, workspace layout) from shapes only, so results are
// reproducible; and dispatch over dtypes. Nothing here synchronises with the device.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels.h"
#include "pai_fast/dendritic.h"

#ifndef PF_CUDA_ARCHS
#define PF_CUDA_ARCHS "unknown"
#endif
#ifndef PF_NVCC_VERSION
#define PF_NVCC_VERSION "unknown"
#endif

namespace {

thread_local std::string g_error;

struct Fail {
  pf_status status;
};

[[noreturn]] void fail(pf_status s, const std::string& msg) {
  g_error = msg;
  throw Fail{s};
}

std::string shape_str(const pf_tensor* t) {
  std::string s = "[";
  for (int i = 0; i < t->ndim; ++i) s += (i ? ", " : "") + std::to_string(t->sizes[i]);
  return s + "]";
}

std::string vec_str(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

int64_t numel(const pf_tensor* t) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim; ++i) n *= t->sizes[i];
  return n;
}

struct Checker {
  const char* fn;

  void shape(const char* name, const pf_tensor* t, const std::vector<int64_t>& expect) const {
    if (t == nullptr)
      fail(PF_ERROR_INVALID_ARGUMENT,
           std::string(fn) + ": argument '" + name + "' is NULL, expected shape " + vec_str(expect));
    if (t->ndim < 0 || t->ndim > PF_MAX_DIMS)
      fail(PF_ERROR_INVALID_ARGUMENT, std::string(fn) + ": argument '" + name + "': ndim must be in [0, " +
                                          std::to_string(PF_MAX_DIMS) + "], got " + std::to_string(t->ndim));
    bool ok = t->ndim == static_cast<int>(expect.size());
    for (size_t i = 0; ok && i < expect.size(); ++i) ok = t->sizes[i] == expect[i];
    if (!ok)
      fail(PF_ERROR_INVALID_ARGUMENT,
           std::string(fn) + ": argument '" + name + "': expected shape " + vec_str(expect) + ", got " + shape_str(t));
    data(name, t);
  }

  void data(const char* name, const pf_tensor* t) const {
    if (t->data == nullptr && numel(t) > 0)
      fail(PF_ERROR_INVALID_ARGUMENT, std::string(fn) + ": argument '" + name + "' has a NULL data pointer but " +
                                          std::to_string(numel(t)) + " elements");
  }

  void ndim(const char* name, const pf_tensor* t, int expect) const {
    if (t == nullptr) fail(PF_ERROR_INVALID_ARGUMENT, std::string(fn) + ": argument '" + name + "' is NULL");
    if (t->ndim != expect)
      fail(PF_ERROR_INVALID_ARGUMENT, std::string(fn) + ": argument '" + name + "': expected " +
                                          std::to_string(expect) + " dims, got " + std::to_string(t->ndim) +
                                          " (shape " + shape_str(t) + ")");
    for (int i = 0; i < t->ndim; ++i)
      if (t->sizes[i] < 0)
        fail(PF_ERROR_INVALID_ARGUMENT,
             std::string(fn) + ": argument '" + name + "' has a negative size " + shape_str(t));
  }

  void contiguous(const char* name, const pf_tensor* t) const {
    int64_t expect = 1;
    for (int i = t->ndim - 1; i >= 0; --i) {
      if (t->sizes[i] != 1 && t->strides[i] != expect)
        fail(PF_ERROR_INVALID_ARGUMENT, std::string(fn) + ": output '" + name + "' must be contiguous (shape " +
                                            shape_str(t) + ", stride of dim " + std::to_string(i) + " is " +
                                            std::to_string(t->strides[i]) + ", expected " + std::to_string(expect) +
                                            ")");
      expect *= t->sizes[i];
    }
  }

  // Stride of dims [first, last] collapsed into one (they must be "viewable" as one dim).
  int64_t flat_stride(const char* name, const pf_tensor* t, int first, int last) const {
    for (int d = first; d <= last; ++d)
      if (t->sizes[d] == 0) return 0;  // no elements: any stride will do
    int64_t s = 0, expect = 0;
    bool any = false;
    for (int d = last; d >= first; --d) {
      if (t->sizes[d] == 1) continue;
      if (!any) {
        s = t->strides[d];
        expect = s * t->sizes[d];
        any = true;
      } else {
        if (t->strides[d] != expect)
          fail(PF_ERROR_INVALID_ARGUMENT, std::string(fn) + ": argument '" + name + "' (shape " + shape_str(t) +
                                              "): dims " + std::to_string(first) + ".." + std::to_string(last) +
                                              " must be flattenable into one dim, but the stride of dim " +
                                              std::to_string(d) + " is " + std::to_string(t->strides[d]) +
                                              ", expected " + std::to_string(expect) + " (make it contiguous)");
        expect *= t->sizes[d];
      }
    }
    return s;
  }
};

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// PAI_FAST_CUDA_SCALAR_LOADS=1 turns the 16-byte vector load paths off (tests cover both paths).
bool vector_loads_enabled() {
  const char* e = std::getenv("PAI_FAST_CUDA_SCALAR_LOADS");
  return e == nullptr || e[0] == '\0' || e[0] == '0';
}

size_t dtype_size(pf_dtype d) {
  switch (d) {
    case PF_FLOAT32:
      return 4;
    case PF_FLOAT16:
    case PF_BFLOAT16:
      return 2;
    case PF_FLOAT64:
      return 8;
  }
  return 0;
}

void check_common(const char* fn, pf_dtype dtype, pf_activation act) {
  if (dtype_size(dtype) == 0)
    fail(PF_ERROR_INVALID_ARGUMENT, std::string(fn) + ": dtype must be PF_FLOAT32/16/BFLOAT16/FLOAT64, got " +
                                        std::to_string(static_cast<int>(dtype)));
  if (act < PF_ACT_IDENTITY || act > PF_ACT_RELU)
    fail(PF_ERROR_INVALID_ARGUMENT, std::string(fn) +
                                        ": activation must be 0..3 (identity, sigmoid, tanh, relu), got " +
                                        std::to_string(static_cast<int>(act)));
}

void check_cuda(const char* fn, const char* what, cudaError_t e) {
  if (e != cudaSuccess)
    fail(PF_ERROR_CUDA,
         std::string(fn) + ": " + what + " failed: " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
#ifndef PF_EMULATE
  e = cudaGetLastError();
  if (e != cudaSuccess)
    fail(PF_ERROR_CUDA, std::string(fn) + ": launching " + what + " failed: " + cudaGetErrorName(e) + " (" +
                            cudaGetErrorString(e) + ")");
#endif
}

template <class F>
pf_status guarded(F&& f) {
  g_error.clear();
  try {
    f();
  } catch (const Fail& e) {
    return e.status;
  } catch (const std::exception& e) {
    g_error = std::string("pai_fast: internal error: ") + e.what();
    return PF_ERROR_INVALID_ARGUMENT;
  }
  return PF_SUCCESS;
}

// ------------------------------------------------------------------ problem description
struct Problem {
  const char* fn;
  pf_dtype dtype;
  int act;
  int math;
  int nd;  // 0 for Linear
  pf::Geom g;
  // strides of x as [B, Cin, ID, IH, IW] (missing spatial dims: 0)
  int64_t sx[5];
};

int math_mode(pf_dtype dtype, int allow_tf32) {
  return (dtype == PF_FLOAT32 && allow_tf32) ? pf::kMathTF32 : pf::kMathNative;
}

void finish_geom(pf::Geom& g) {
  g.R = 1 + g.D;
  g.IPIX = g.in[0] * g.in[1] * g.in[2];
  g.OPIX = g.out[0] * g.out[1] * g.out[2];
  g.KK = g.k[0] * g.k[1] * g.k[2];
  g.KC = g.Cin * g.KK;
  g.P = g.B * g.OPIX;
  g.PIN = g.B * g.IPIX;
}

void check_limits(const Problem& pr) {
  const pf::Geom& g = pr.g;
  if (g.D > PF_MAX_DENDRITES)
    fail(PF_ERROR_UNSUPPORTED, std::string(pr.fn) + ": at most " + std::to_string(PF_MAX_DENDRITES) +
                                   " dendrites are supported by the fused kernels, got D=" + std::to_string(g.D));
  for (int i = 0; i < 3; ++i)
    if (g.in[i] >= (1 << 28) || g.k[i] * g.dil[i] >= (1 << 28) || g.pad[i] >= (1 << 28))
      fail(PF_ERROR_UNSUPPORTED, std::string(pr.fn) + ": spatial sizes, paddings and dilated kernels must be < 2^28");
}

Problem linear_problem(const char* fn, pf_dtype dtype, pf_activation act, int allow_tf32, const pf_tensor* x,
                       const pf_tensor* weight, const pf_tensor* dendrite_weight) {
  Checker ck{fn};
  check_common(fn, dtype, act);
  Problem pr{};
  pr.fn = fn;
  pr.dtype = dtype;
  pr.act = static_cast<int>(act);
  pr.math = math_mode(dtype, allow_tf32);
  pr.nd = 0;
  ck.ndim("x", x, 2);
  ck.ndim("weight", weight, 2);
  const int64_t M = x->sizes[0], K = x->sizes[1], N = weight->sizes[0];
  ck.shape("x", x, {M, K});
  ck.shape("weight", weight, {N, K});
  int64_t D = 0;
  if (dendrite_weight != nullptr) {
    ck.ndim("dendrite_weight", dendrite_weight, 3);
    D = dendrite_weight->sizes[0];
    ck.shape("dendrite_weight", dendrite_weight, {D, N, K});
  }
  pf::Geom& g = pr.g;
  g.B = M;
  g.Cin = K;
  g.Cout = N;
  g.D = D;
  for (int i = 0; i < 3; ++i) {
    g.in[i] = g.out[i] = g.k[i] = g.st[i] = g.dil[i] = 1;
    g.pad[i] = 0;
  }
  finish_geom(g);
  pr.sx[0] = x->strides[0];
  pr.sx[1] = x->strides[1];
  pr.sx[2] = pr.sx[3] = pr.sx[4] = 0;
  check_limits(pr);
  return pr;
}

Problem conv_problem(const char* fn, pf_dtype dtype, pf_activation act, int allow_tf32, const pf_conv_geometry* geo,
                     const pf_tensor* x, const pf_tensor* weight, const pf_tensor* dendrite_weight) {
  Checker ck{fn};
  check_common(fn, dtype, act);
  if (geo == nullptr) fail(PF_ERROR_INVALID_ARGUMENT, std::string(fn) + ": argument 'geometry' is NULL");
  const int nd = geo->nd;
  if (nd < 1 || nd > 3)
    fail(PF_ERROR_INVALID_ARGUMENT, std::string(fn) + ": geometry.nd must be 1, 2 or 3, got " + std::to_string(nd));
  Problem pr{};
  pr.fn = fn;
  pr.dtype = dtype;
  pr.act = static_cast<int>(act);
  pr.math = math_mode(dtype, allow_tf32);
  pr.nd = nd;
  ck.ndim("x", x, 2 + nd);
  ck.ndim("weight", weight, 2 + nd);
  pf::Geom& g = pr.g;
  g.B = x->sizes[0];
  g.Cin = x->sizes[1];
  g.Cout = weight->sizes[0];
  if (weight->sizes[1] != g.Cin)
    fail(PF_ERROR_INVALID_ARGUMENT, std::string(fn) + ": argument 'weight' " + shape_str(weight) + " must have " +
                                        std::to_string(g.Cin) + " input channels (x is " + shape_str(x) +
                                        "); groups != 1 is not supported");
  for (int i = 0; i < 3; ++i) {
    g.in[i] = g.out[i] = g.k[i] = g.st[i] = g.dil[i] = 1;
    g.pad[i] = 0;
    pr.sx[2 + i] = 0;
  }
  pr.sx[0] = x->strides[0];
  pr.sx[1] = x->strides[1];
  for (int i = 0; i < nd; ++i) {
    const int j = 3 - nd + i;
    g.in[j] = x->sizes[2 + i];
    g.k[j] = weight->sizes[2 + i];
    g.st[j] = geo->stride[i];
    g.pad[j] = geo->padding[i];
    g.dil[j] = geo->dilation[i];
    pr.sx[2 + j] = x->strides[2 + i];
    if (g.st[j] < 1 || g.dil[j] < 1 || g.pad[j] < 0 || g.k[j] < 1)
      fail(PF_ERROR_INVALID_ARGUMENT,
           std::string(fn) + ": spatial dim " + std::to_string(i) +
               ": need stride >= 1, dilation >= 1, padding >= 0 and kernel size >= 1; got stride " +
               std::to_string(g.st[j]) + ", dilation " + std::to_string(g.dil[j]) + ", padding " +
               std::to_string(g.pad[j]) + ", kernel " + std::to_string(g.k[j]));
    const int64_t span = g.dil[j] * (g.k[j] - 1) + 1;
    const int64_t o = (g.in[j] + 2 * g.pad[j] - span) / g.st[j] + 1;
    if (g.in[j] + 2 * g.pad[j] < span || o < 1)
      fail(PF_ERROR_INVALID_ARGUMENT, std::string(fn) + ": spatial dim " + std::to_string(i) + ": input size " +
                                          std::to_string(g.in[j]) + " with padding " + std::to_string(g.pad[j]) +
                                          " is smaller than the dilated kernel (" + std::to_string(span) + ")");
    g.out[j] = o;
  }
  std::vector<int64_t> wshape(weight->sizes, weight->sizes + weight->ndim);
  ck.shape("weight", weight, wshape);
  std::vector<int64_t> xshape(x->sizes, x->sizes + x->ndim);
  ck.shape("x", x, xshape);
  g.D = 0;
  if (dendrite_weight != nullptr) {
    ck.ndim("dendrite_weight", dendrite_weight, 3 + nd);
    g.D = dendrite_weight->sizes[0];
    std::vector<int64_t> dws = {g.D};
    dws.insert(dws.end(), wshape.begin(), wshape.end());
    ck.shape("dendrite_weight", dendrite_weight, dws);
  }
  finish_geom(g);
  check_limits(pr);
  return pr;
}

std::vector<int64_t> out_shape(const Problem& pr, bool with_d) {
  const pf::Geom& g = pr.g;
  std::vector<int64_t> s = {g.B};
  if (with_d) s.push_back(g.D);
  s.push_back(g.Cout);
  for (int i = 0; i < pr.nd; ++i) s.push_back(g.out[3 - pr.nd + i]);
  return s;
}

// Weight [Cout, ...] viewed as [Cout, KC] (lead = leading dims before Cout, 0 or 1).
void weight_strides(const Checker& ck, const char* name, const pf_tensor* w, int lead, int64_t* sn, int64_t* sk) {
  *sn = w->strides[lead];
  *sk = w->ndim > lead + 2 ? ck.flat_stride(name, w, lead + 1, w->ndim - 1) : w->strides[lead + 1];
}

// 16-byte vector loads of a dtype: elements per vector.
int64_t vec_width(pf_dtype dtype) { return 16 / static_cast<int64_t>(dtype_size(dtype)); }

// Whether x's rows (Linear: [M, K] with unit stride along K) take 16-byte vector loads: every vector entirely in or
// out of range (K a multiple of the vector) and aligned.
bool x_rows_vec(const Problem& pr, const void* x) {
  const int64_t vw = vec_width(pr.dtype);
  return vector_loads_enabled() && pr.nd == 0 && pr.sx[1] == 1 && pr.sx[0] % vw == 0 && pr.g.KC % vw == 0 &&
         aligned16(x);
}

// weight and dendrite_weight as the kernels view them ([(D,) Cout, KC] with strides), and whether their rows take
// 16-byte vector loads (unit stride along KC, rows and start aligned, KC a multiple of the vector).
struct WeightViews {
  const void *w = nullptr, *v = nullptr;
  int64_t swn = 0, swk = 0, svd = 0, svn = 0, svk = 0;
  bool rows_vec = false;
};

WeightViews weight_views(const Checker& ck, const Problem& pr, const pf_tensor* weight,
                         const pf_tensor* dendrite_weight) {
  const pf::Geom& g = pr.g;
  WeightViews wv;
  wv.w = weight->data;
  weight_strides(ck, "weight", weight, 0, &wv.swn, &wv.swk);
  if (g.D > 0) {
    wv.v = dendrite_weight->data;
    wv.svd = dendrite_weight->strides[0];
    weight_strides(ck, "dendrite_weight", dendrite_weight, 1, &wv.svn, &wv.svk);
  }
  const int64_t vw = vec_width(pr.dtype);
  wv.rows_vec = vector_loads_enabled() && wv.swk == 1 && wv.swn % vw == 0 && aligned16(wv.w) && g.KC % vw == 0 &&
                (g.D == 0 || (wv.svk == 1 && wv.svn % vw == 0 && wv.svd % vw == 0 && aligned16(wv.v)));
  return wv;
}

// The weight views into a kernel's parameters (FwdParams, DgradParams, OnepassParams name them alike).
template <class P>
void set_weights(P& p, const WeightViews& wv) {
  p.w = wv.w;
  p.swn = wv.swn;
  p.swk = wv.swk;
  p.v = wv.v;
  p.svd = wv.svd;
  p.svn = wv.svn;
  p.svk = wv.svk;
}

// [B, (D,) C, *sp] viewed as [B, (D,) C, OPIX].
int64_t pix_stride(const Checker& ck, const char* name, const pf_tensor* t, int first_sp) {
  if (t->ndim <= first_sp) return 0;
  return ck.flat_stride(name, t, first_sp, t->ndim - 1);
}

struct Params3 {  // bias, gate, cascade views
  const void *bias = nullptr, *vbias = nullptr, *gate = nullptr, *casc = nullptr;
  int64_t sb = 0, svbd = 0, svbn = 0, sgd = 0, sgn = 0, sci = 0, scj = 0, scn = 0;
};

void check_gate_cascade(const Checker& ck, const Problem& pr, const pf_tensor* gate, const pf_tensor* cascade,
                        Params3& q) {
  const int64_t D = pr.g.D, N = pr.g.Cout;
  if (D == 0) return;
  ck.shape("gate", gate, {D, N});
  ck.shape("cascade", cascade, {D, D, N});
  q.gate = gate->data;
  q.sgd = gate->strides[0];
  q.sgn = gate->strides[1];
  q.casc = cascade->data;
  q.sci = cascade->strides[0];
  q.scj = cascade->strides[1];
  q.scn = cascade->strides[2];
}

// The gate and cascade views into a kernel's parameters (FwdParams, DzParams, OnepassParams name them alike).
template <class P>
void set_gate_cascade(P& p, const Params3& q) {
  p.gate = q.gate;
  p.sgd = q.sgd;
  p.sgn = q.sgn;
  p.casc = q.casc;
  p.sci = q.sci;
  p.scj = q.scj;
  p.scn = q.scn;
}

template <class F>
cudaError_t dispatch(pf_dtype dtype, F&& f) {
  switch (dtype) {
    case PF_FLOAT32:
      return f(float{});
    case PF_FLOAT16:
      return f(__half{});
    case PF_BFLOAT16:
      return f(__nv_bfloat16{});
    case PF_FLOAT64:
      return f(double{});
  }
  return cudaErrorInvalidValue;
}

// The Hopper kernel (fp16/bf16 only, builds with CUTLASS) when `use_hopper`, else the generic one for the dtype.
// Without CUTLASS the Hopper callable is never instantiated, so its kernels need not exist.
template <class H, class G>
cudaError_t hopper_or_generic(bool use_hopper, pf_dtype dtype, H&& hopper, G&& generic) {
#ifdef PF_HAVE_SM90_CUTLASS
  if (use_hopper) return dtype == PF_FLOAT16 ? hopper(__half{}) : hopper(__nv_bfloat16{});
#else
  (void)use_hopper;
  (void)hopper;
#endif
  return dispatch(dtype, generic);
}

// ------------------------------------------------------------------ forward
// Checks the forward's arguments and gathers them for the kernels.
pf::FwdParams forward_params(const Problem& pr, const pf_tensor* x, const pf_tensor* weight, const pf_tensor* bias,
                             const pf_tensor* dendrite_weight, const pf_tensor* dendrite_bias, const pf_tensor* gate,
                             const pf_tensor* cascade, const pf_tensor* y, const pf_tensor* h) {
  const Checker ck{pr.fn};
  const pf::Geom& g = pr.g;
  const int lead_sp = pr.nd == 0 ? 0 : 2;  // first spatial dim of y
  pf::FwdParams p{};
  p.g = g;
  p.x = x->data;
  for (int i = 0; i < 5; ++i) p.sx[i] = pr.sx[i];
  const WeightViews wv = weight_views(ck, pr, weight, dendrite_weight);
  set_weights(p, wv);
  if (bias != nullptr) {
    ck.shape("bias", bias, {g.Cout});
    p.bias = bias->data;
    p.sb = bias->strides[0];
  }
  if (g.D > 0) {
    if ((bias == nullptr) != (dendrite_bias == nullptr))
      fail(PF_ERROR_INVALID_ARGUMENT,
           std::string(pr.fn) + ": 'dendrite_bias' must be given exactly when 'bias' is (bias is " +
               (bias ? "given" : "NULL") + ", dendrite_bias is " + (dendrite_bias ? "given" : "NULL") + ")");
    if (dendrite_bias != nullptr) {
      ck.shape("dendrite_bias", dendrite_bias, {g.D, g.Cout});
      p.vbias = dendrite_bias->data;
      p.svbd = dendrite_bias->strides[0];
      p.svbn = dendrite_bias->strides[1];
    }
  }
  Params3 q;
  check_gate_cascade(ck, pr, gate, cascade, q);
  set_gate_cascade(p, q);
  ck.shape("y", y, out_shape(pr, false));
  p.y = y->data;
  p.syb = y->strides[0];
  p.syc = y->strides[1];
  p.syp = pix_stride(ck, "y", y, lead_sp);
  if (h != nullptr && g.D > 0) {
    ck.shape("h", h, out_shape(pr, true));
    p.h = h->data;
    p.shb = h->strides[0];
    p.shd = h->strides[1];
    p.shc = h->strides[2];
    p.shp = pix_stride(ck, "h", h, lead_sp + 1);
  }
  p.act = pr.act;
  p.bno = static_cast<int>(pf::kTileBN / g.R);
  p.n_tiles = static_cast<int>((g.Cout + p.bno - 1) / p.bno);
  if ((g.Cout + p.bno - 1) / p.bno > 0x7fffffff)
    fail(PF_ERROR_UNSUPPORTED, std::string(pr.fn) + ": too many output channels");
  // Coalescing: neighbouring threads walk x's contiguous dim (k for row-major Linear and channels-last,
  // the pixel for NCHW), the weight rows along k, and y along its contiguous dim.
  p.a_row_fast = pr.nd == 0 ? (pr.sx[1] != 1 && pr.sx[0] == 1) : (pr.sx[4] == 1 && g.out[2] > 1);
  p.b_row_fast = p.swk != 1 && p.swn == 1;
  p.epi_row_fast = p.syc != 1;
  // 16-byte vector loads: x rows (Linear) and weight rows (also Conv: weights flattened [Cout, KC]).
  p.a_vec = x_rows_vec(pr, p.x);
  p.b_vec = wv.rows_vec;
  return p;
}

void run_forward(const Problem& pr, const pf_tensor* x, const pf_tensor* weight, const pf_tensor* bias,
                 const pf_tensor* dendrite_weight, const pf_tensor* dendrite_bias, const pf_tensor* gate,
                 const pf_tensor* cascade, const pf_tensor* y, const pf_tensor* h, cudaStream_t stream) {
  const pf::FwdParams p = forward_params(pr, x, weight, bias, dendrite_weight, dendrite_bias, gate, cascade, y, h);
  if (pr.g.P == 0 || pr.g.Cout == 0) return;
  const cudaError_t e = dispatch(pr.dtype, [&](auto tag) { return pf::launch_fwd<decltype(tag)>(p, pr.math, stream); });
  check_cuda(pr.fn, "the forward kernel", e);
}

// ------------------------------------------------------------------ Hopper forward over packed weights
// What the Hopper path needs to know of a device, queried once per device (this runs on every forward and backward).
struct DeviceInfo {
  signed char sm90 = 0;  // 0 unknown, 1 sm_90, -1 not
  int sms = 0;
};

// The current device's DeviceInfo, or nullptr when there is none.
[[maybe_unused]] const DeviceInfo* device_info() {
  static DeviceInfo infos[64];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) {
    cudaGetLastError();  // no device: the Hopper path does not apply
    return nullptr;
  }
  DeviceInfo& d = infos[dev];
  if (d.sm90 == 0) {
    int major = 0, minor = 0, sms = 0;
    const bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
                    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess &&
                    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess;
    if (!ok) cudaGetLastError();
    d.sms = sms;
    d.sm90 = ok && major == 9 && minor == 0 ? 1 : -1;  // sm_90a code runs on sm_90 only
  }
  return &d;
}

// Whether the current device runs this build's sm_90a kernels (PAI_FAST_CUDA_SM90=0 turns them off).
[[maybe_unused]] bool sm90_device() {
#ifdef PF_HAVE_SM90_CUTLASS
  const char* off = std::getenv("PAI_FAST_CUDA_SM90");
  if (off != nullptr && off[0] == '0') return false;
  const DeviceInfo* d = device_info();
  return d != nullptr && d->sm90 == 1;
#else
  return false;
#endif
}

// The Hopper forward's mainloop schedule, from the H200 measurements (benchmarks/results, probe_sm90): ping-pong
// where its overlap of one tile's epilogue with the other's mainloop pays, i.e. for 2 <= D <= 6 (the epilogue is a
// large share of the tile) and for small problems (under two waves of 256-row tiles, its 128-row tiles fill more
// SMs); cooperative otherwise (its 256x128 tiles have the faster mainloop). PAI_FAST_SM90_SCHEDULE=cooperative|
// pingpong overrides it, to measure them side by side. Called after sm90_device() said yes.
[[maybe_unused]] int sm90_schedule(const pf::Geom& g) {
  if (const char* s = std::getenv("PAI_FAST_SM90_SCHEDULE")) {
    const std::string v(s);
    if (v == "pingpong") return pf::kSm90PingPong;
    if (v == "cooperative") return pf::kSm90Cooperative;
  }
  const DeviceInfo* d = device_info();
  const int64_t sms = d != nullptr && d->sms > 0 ? d->sms : 132;
  const int64_t coop_tiles = (g.P + 255) / 256 * (pf::sm90_packed_rows(g.Cout, g.R) / pf::kSm90TileN);
  return (g.D >= 2 && g.D <= 6) || coop_tiles < 2 * sms ? pf::kSm90PingPong : pf::kSm90Cooperative;
}

// Whether the Hopper forward's epilogue stages its stores in shared memory: where y and h take 16-byte row segments
// of 8 neurons (unit stride along neurons, rows and h's branch planes 16-byte aligned, whole groups of 8 neurons),
// unless PAI_FAST_SM90_EPILOGUE=direct asks for the register stores (to measure them side by side).
[[maybe_unused]] int sm90_staged_epilogue(const pf::FwdParams& p) {
  const char* e = std::getenv("PAI_FAST_SM90_EPILOGUE");
  if (e != nullptr && std::string(e) == "direct") return 0;
  return p.g.Cout % 8 == 0 && p.syc == 1 && p.syb % 8 == 0 && aligned16(p.y) &&
         (p.h == nullptr || (p.shc == 1 && p.shb % 8 == 0 && p.shd % 8 == 0 && aligned16(p.h)));
}

// Bytes of the packed weights, or 0 when this build, the current device or the problem does not take the path.
size_t sm90_packed_bytes(const Problem& pr) {
#ifdef PF_HAVE_SM90_CUTLASS
  if (pr.nd != 0 || (pr.dtype != PF_FLOAT16 && pr.dtype != PF_BFLOAT16)) return 0;
  if (pr.g.R > pf::kSm90MaxR || pr.g.KC % 8 != 0 || pr.g.KC == 0 || pr.g.KC > 0x7fffffff) return 0;
  if (!sm90_device()) return 0;
  const int64_t rows = pf::sm90_packed_rows(pr.g.Cout, pr.g.R);
  if (rows > 0x7fffffff) return 0;
  return static_cast<size_t>(rows * pr.g.KC) * dtype_size(pr.dtype);
#else
  (void)pr;
  return 0;
#endif
}

// The Linear problem of the weights alone (an x with no rows), for the calls that only pack weights.
Problem weights_problem(const char* fn, pf_dtype dtype, const pf_tensor* weight, const pf_tensor* dendrite_weight) {
  if (weight == nullptr) fail(PF_ERROR_INVALID_ARGUMENT, std::string(fn) + ": 'weight' must not be NULL");
  pf_tensor x{};
  x.ndim = 2;
  x.sizes[1] = weight->ndim == 2 ? weight->sizes[1] : 0;
  x.strides[0] = x.sizes[1];
  x.strides[1] = 1;
  return linear_problem(fn, dtype, PF_ACT_IDENTITY, 0, &x, weight, dendrite_weight);
}

size_t need_packed(const Problem& pr, const void* packed, size_t packed_bytes) {
  const size_t need = sm90_packed_bytes(pr);
  if (need == 0)
    fail(PF_ERROR_UNSUPPORTED, std::string(pr.fn) +
                                   ": the packed-weight forward does not apply here (it needs a build with CUTLASS, an "
                                   "sm_90 device, fp16/bf16, D <= " +
                                   std::to_string(pf_sm90_max_d()) + " and in_features % 8 == 0; got D=" +
                                   std::to_string(pr.g.D) + ", in_features=" + std::to_string(pr.g.KC) +
                                   "); check pf_linear_packed_bytes first");
  if (packed == nullptr || packed_bytes < need || !aligned16(packed))
    fail(PF_ERROR_WORKSPACE, std::string(pr.fn) + ": 'packed' must be a 16-byte aligned device buffer of at least " +
                                 std::to_string(need) + " bytes, got " + std::to_string(packed_bytes) + " bytes at " +
                                 (packed ? "an address" : "NULL") + (packed && !aligned16(packed) ? " not aligned" : ""));
  return need;
}

// ------------------------------------------------------------------ backward
struct BwdPlan {
  int lanes = 1;
  int64_t rows_per_chunk = 1;
  int nchunks = 0, nslots = 0, np = 1;
  int dg_splits = 1, dg_ktps = 1, dg_mt = 0, dg_nt = 0;
  int wg_splits = 1, wg_ktps = 1, wg_mt = 0, wg_nt = 0;
  size_t off_dz = 0, off_part = 0, off_scratch = 0, off_ws = 0, total = 0;
};

size_t align_up(size_t v) { return (v + 255) & ~static_cast<size_t>(255); }

constexpr size_t kMinWorkspace = 256;  // what a backward asks for at least, so a valid workspace is never NULL

// PAI_FAST_CUDA_BACKWARD=onepass|split forces the Linear backward's path (tests run both); unset or "auto": the
// planner's choice below.
int forced_backward_path() {
  const char* e = std::getenv("PAI_FAST_CUDA_BACKWARD");
  if (e == nullptr) return 0;
  if (std::strcmp(e, "onepass") == 0) return 1;
  if (std::strcmp(e, "split") == 0) return 2;
  return 0;
}

// The one-pass backward (onepass.cu: one launch, dZ recomputed inside both GEMMs, no workspace) for Linear layers
// with 1 <= D <= 3 up to 2^24 multiply-adds per GEMM, M (1+D) N K. Measured on the H200 (benchmarks/
// probe_linear_bwd.py --backend cuda, results h200_probe_linear_bwd_cuda_240d9fc): at 64x784->128 D = 1 it takes the
// split backward's device time (bf16 16.6 vs 16.5 us; fp32 31.6 vs 47.9) and an eager call costs 21 vs 56 us (bf16),
// one launch where the split one makes five. Past that its recomputation and its few long dX blocks lose: 64x784 D = 3
// bf16 30 vs 20 us, 256x1024->1024 bf16 2.8-3.5x the split one's device time (CUTLASS GEMMs there); fp32's split
// GEMMs are slower, but not at every size (256x1024: 1.5-1.65x against; 1024x1024: 0.65-0.73x), so one threshold.
bool use_onepass(const Problem& pr) {
  const pf::Geom& g = pr.g;
  if (pr.nd != 0 || g.D < 1 || g.D > pf::kOnepassMaxD || g.P == 0 || g.Cout == 0 || g.Cin == 0) return false;
  const int forced = forced_backward_path();
  if (forced != 0) return forced == 1;
  const double macs = static_cast<double>(g.P) * static_cast<double>(g.R * g.Cout) * static_cast<double>(g.Cin);
  return macs <= 0x1p24;
}

void plan_split(int64_t tiles, int64_t ktiles, int64_t out_elems, size_t acc, int* splits, int* ktps) {
  int64_t sp = 1;
  if (tiles > 0 && tiles < 132 && ktiles >= 16) {
    sp = std::min<int64_t>({(264 + tiles - 1) / tiles, ktiles / 8, 64});
    while (sp > 1 && static_cast<double>(sp) * out_elems * acc > 512.0 * (1 << 20)) --sp;
    sp = std::max<int64_t>(sp, 1);
  }
  const int64_t per = ktiles > 0 ? (ktiles + sp - 1) / sp : 1;
  *ktps = static_cast<int>(per);
  *splits = ktiles > 0 ? static_cast<int>((ktiles + per - 1) / per) : 1;
}

BwdPlan plan_backward(const Problem& pr, int64_t dy_pix_stride) {
  const pf::Geom& g = pr.g;
  BwdPlan pl;
  const size_t ts = dtype_size(pr.dtype);
  const size_t as = pr.dtype == PF_FLOAT64 ? 8 : 4;
  pl.np = static_cast<int>(1 + 2 * g.D + g.D * (g.D - 1) / 2);
  // dZ kernel: pixel-fast lanes when neighbouring pixels are neighbours in memory (NCHW), else
  // channel-fast. About 512 blocks, each thread with >= 4 rows; channel-fast with many channels, more (the loop is
  // latency-bound, so occupancy is what feeds it). Pixel-fast blocks leave 32 partial-sum slots per channel each.
  pl.lanes = (g.OPIX > 1 && dy_pix_stride == 1) ? 32 : 1;
  const int64_t cpb = pf::kDzThreads / pl.lanes;
  const int64_t grid_y = (g.Cout + cpb - 1) / cpb;
  if (grid_y > 65535) fail(PF_ERROR_UNSUPPORTED, std::string(pr.fn) + ": too many output channels for the dZ kernel");
  if (g.P > 0 && g.Cout > 0) {
    int64_t nch = std::max<int64_t>(1, 512 / std::max<int64_t>(grid_y, 1));
    // Channel-fast with many channels: up to 4096 blocks. Each chunk is one more partial-sum slot per channel, which
    // the reduction sums one after another, so at most 128 chunks, or the 512-block plan's count where that is larger
    // (8192x4096: 128 chunks x 32 channel blocks, the H200-measured configuration).
    if (pl.lanes == 1) nch = std::max<int64_t>(nch, std::min<int64_t>(4096 / std::max<int64_t>(grid_y, 1), 128));
    nch = std::min<int64_t>(nch, std::max<int64_t>(1, (g.P + 4 * pl.lanes - 1) / (4 * pl.lanes)));
    pl.rows_per_chunk = (g.P + nch - 1) / nch;
    pl.nchunks = static_cast<int>((g.P + pl.rows_per_chunk - 1) / pl.rows_per_chunk);
    pl.nslots = pl.nchunks * pl.lanes;
  }
  // GEMMs
  const int bm = pf::tile_bm(pr.dtype, pr.math), bk = pf::tile_bk(pr.dtype, pr.math), bn = pf::kTileBN;
  const int64_t dg_mt = (g.PIN + bm - 1) / bm, dg_nt = (g.Cin + bn - 1) / bn;
  const int64_t wg_mt = (g.R * g.Cout + bm - 1) / bm, wg_nt = (g.KC + bn - 1) / bn;
  if (dg_mt * dg_nt > 0x7fffffffLL || wg_mt * wg_nt > 0x7fffffffLL)
    fail(PF_ERROR_UNSUPPORTED, std::string(pr.fn) + ": problem too large for one launch");
  pl.dg_mt = static_cast<int>(dg_mt);
  pl.dg_nt = static_cast<int>(dg_nt);
  pl.wg_mt = static_cast<int>(wg_mt);
  pl.wg_nt = static_cast<int>(wg_nt);
  plan_split(dg_mt * dg_nt, (g.R * g.Cout * g.KK + bk - 1) / bk, g.PIN * g.Cin, as, &pl.dg_splits, &pl.dg_ktps);
  plan_split(wg_mt * wg_nt, (g.P + bk - 1) / bk, g.R * g.Cout * g.KC, as, &pl.wg_splits, &pl.wg_ktps);
  // workspace
  size_t off = 0;
  pl.off_dz = off;
  off = align_up(off + static_cast<size_t>(g.B * g.R * g.Cout * g.OPIX) * ts);
  pl.off_part = off;
  off = align_up(off + static_cast<size_t>(pl.nslots) * pl.np * g.Cout * as);
  pl.off_scratch = off;
  if (g.D > pf::kMaxFusedD) off = align_up(off + static_cast<size_t>(pl.nslots) * g.Cout * g.D * as);
  pl.off_ws = off;
  size_t ws = 0;
  if (pl.dg_splits > 1) ws = std::max(ws, static_cast<size_t>(pl.dg_splits) * g.PIN * g.Cin * as);
  if (pl.wg_splits > 1) ws = std::max(ws, static_cast<size_t>(pl.wg_splits) * g.R * g.Cout * g.KC * as);
  off = align_up(off + ws);
  pl.total = std::max<size_t>(off, kMinWorkspace);
  return pl;
}

void run_backward(const Problem& pr, const pf_tensor* grad_y, const pf_tensor* x, const pf_tensor* weight,
                  const pf_tensor* dendrite_weight, const pf_tensor* gate, const pf_tensor* cascade, const pf_tensor* h,
                  const pf_tensor* dx, const pf_tensor* dweight, const pf_tensor* dbias,
                  const pf_tensor* ddendrite_weight, const pf_tensor* ddendrite_bias, const pf_tensor* dgate,
                  const pf_tensor* dcascade, void* workspace, size_t* workspace_bytes, cudaStream_t stream) {
  const Checker ck{pr.fn};
  const pf::Geom& g = pr.g;
  const int lead_sp = pr.nd == 0 ? 0 : 2;
  ck.shape("grad_y", grad_y, out_shape(pr, false));
  const int64_t sdyp = pix_stride(ck, "grad_y", grad_y, lead_sp);
  Params3 q;
  check_gate_cascade(ck, pr, gate, cascade, q);
  int64_t shp = 0;
  if (g.D > 0) {
    ck.shape("h", h, out_shape(pr, true));
    shp = pix_stride(ck, "h", h, lead_sp + 1);
  }
  // outputs
  std::vector<int64_t> xs(x->sizes, x->sizes + x->ndim), ws(weight->sizes, weight->sizes + weight->ndim);
  ck.shape("dx", dx, xs);
  ck.shape("dweight", dweight, ws);
  ck.contiguous("dweight", dweight);
  if (dbias != nullptr) {
    ck.shape("dbias", dbias, {g.Cout});
    ck.contiguous("dbias", dbias);
  }
  if (g.D > 0) {
    std::vector<int64_t> dws = {g.D};
    dws.insert(dws.end(), ws.begin(), ws.end());
    ck.shape("ddendrite_weight", ddendrite_weight, dws);
    ck.contiguous("ddendrite_weight", ddendrite_weight);
    if (ddendrite_bias != nullptr) {
      ck.shape("ddendrite_bias", ddendrite_bias, {g.D, g.Cout});
      ck.contiguous("ddendrite_bias", ddendrite_bias);
    }
    ck.shape("dgate", dgate, {g.D, g.Cout});
    ck.contiguous("dgate", dgate);
    ck.shape("dcascade", dcascade, {g.D, g.D, g.Cout});
    ck.contiguous("dcascade", dcascade);
  }
  if (workspace_bytes == nullptr)
    fail(PF_ERROR_INVALID_ARGUMENT, std::string(pr.fn) + ": argument 'workspace_bytes' is NULL");
  const WeightViews wv = weight_views(ck, pr, weight, dendrite_weight);
  const bool onepass = use_onepass(pr);
  const BwdPlan pl = onepass ? BwdPlan{} : plan_backward(pr, sdyp);
  const size_t need = onepass ? kMinWorkspace : pl.total;
  if (workspace == nullptr) {
    *workspace_bytes = need;
    return;
  }
  if (*workspace_bytes < need)
    fail(PF_ERROR_WORKSPACE, std::string(pr.fn) + ": workspace of " + std::to_string(*workspace_bytes) +
                                 " bytes is too small, need " + std::to_string(need));
  if (onepass) {
    pf::OnepassParams op{};
    op.M = g.P;
    op.N = g.Cout;
    op.K = g.Cin;
    op.D = static_cast<int>(g.D);
    op.act = pr.act;
    op.dy = grad_y->data;
    op.sdym = grad_y->strides[0];
    op.sdyn = grad_y->strides[1];
    op.x = x->data;
    op.sxm = pr.sx[0];
    op.sxk = pr.sx[1];
    set_weights(op, wv);
    op.h = h->data;
    op.shm = h->strides[0];
    op.shd = h->strides[1];
    op.shn = h->strides[2];
    set_gate_cascade(op, q);
    op.dx = dx->data;
    op.sdxm = dx->strides[0];
    op.sdxk = dx->strides[1];
    op.dw = dweight->data;
    op.dv = ddendrite_weight->data;
    op.dbias = dbias ? dbias->data : nullptr;
    op.dgate = dgate->data;
    op.dvbias = ddendrite_bias ? ddendrite_bias->data : nullptr;
    op.dcasc = dcascade->data;
    op.x_vec = x_rows_vec(pr, op.x);
    op.w_vec = wv.rows_vec;
    check_cuda(pr.fn, "the one-pass backward kernel", dispatch(pr.dtype, [&](auto tag) {
                 return pf::launch_onepass<decltype(tag)>(op, pr.math, stream);
               }));
    return;
  }
  char* wsp = static_cast<char*>(workspace);
  void* dz = wsp + pl.off_dz;

  // 1. dZcat + partial sums, 2. fixed-order reduction into dbias/dgate/dc/dcascade
  pf::DzParams dp{};
  dp.g = g;
  dp.dy = grad_y->data;
  dp.sdyb = grad_y->strides[0];
  dp.sdyc = grad_y->strides[1];
  dp.sdyp = sdyp;
  if (g.D > 0) {
    dp.h = h->data;
    dp.shb = h->strides[0];
    dp.shd = h->strides[1];
    dp.shc = h->strides[2];
    dp.shp = shp;
  }
  set_gate_cascade(dp, q);
  dp.dz = dz;
  dp.part = wsp + pl.off_part;
  dp.scratch = wsp + pl.off_scratch;
  dp.act = pr.act;
  dp.lanes = pl.lanes;
  dp.rows_per_chunk = pl.rows_per_chunk;
  dp.nchunks = pl.nchunks;
  dp.np = pl.np;
  // Two channels per thread, with vector accesses, where the rows of grad_y, h and dZcat allow them.
  const auto aligned2 = [&](const void* q) { return reinterpret_cast<uintptr_t>(q) % (2 * dtype_size(pr.dtype)) == 0; };
  const bool h_vec = g.D == 0 || (dp.shc == 1 && dp.shb % 2 == 0 && dp.shd % 2 == 0 && aligned2(dp.h));
  dp.vec = pl.lanes == 1 && g.OPIX == 1 && g.D <= pf::kDzMaxVecD && g.Cout % 2 == 0 && dp.sdyc == 1 &&
                   dp.sdyb % 2 == 0 && aligned2(dp.dy) && h_vec && aligned2(dz)
               ? 2
               : 1;
  check_cuda(pr.fn, "the dZ kernel",
             dispatch(pr.dtype, [&](auto tag) { return pf::launch_dz<decltype(tag)>(dp, stream); }));

  pf::ReduceParams rp{};
  rp.part = dp.part;
  rp.nslots = pl.nslots;
  rp.np = pl.np;
  rp.C = g.Cout;
  rp.D = g.D;
  rp.dbias = dbias ? dbias->data : nullptr;
  if (g.D > 0) {
    rp.dgate = dgate->data;
    rp.dvbias = ddendrite_bias ? ddendrite_bias->data : nullptr;
    rp.dcasc = dcascade->data;
  }
  check_cuda(pr.fn, "the reduction kernel",
             dispatch(pr.dtype, [&](auto tag) { return pf::launch_reduce<decltype(tag)>(rp, stream); }));

  // 3. dX = dZcat . Wcat
  pf::DgradParams gp{};
  gp.g = g;
  gp.dz = dz;
  set_weights(gp, wv);
  gp.dx = dx->data;
  gp.sdx[0] = dx->strides[0];
  gp.sdx[1] = dx->strides[1];
  gp.sdx[2] = gp.sdx[3] = gp.sdx[4] = 0;
  for (int i = 0; i < pr.nd; ++i) gp.sdx[2 + 3 - pr.nd + i] = dx->strides[2 + i];
  gp.ws = wsp + pl.off_ws;
  gp.splits = pl.dg_splits;
  gp.k_tiles_per_split = pl.dg_ktps;
  gp.m_tiles = pl.dg_mt;
  gp.n_tiles = pl.dg_nt;
  gp.a_row_fast = g.OPIX > 1;
  gp.b_row_fast = g.KK == 1 && gp.swk == 1;
  gp.epi_row_fast = gp.sdx[1] != 1;
  // 16-byte vector loads (Linear): dZcat rows and, for dX, the weight rows (KC = Cin).
  const int64_t vw = vec_width(pr.dtype);
  const bool vec = vector_loads_enabled() && pr.nd == 0;
  const int64_t RN = g.R * g.Cout;
  gp.a_vec = vec && RN % vw == 0;
  gp.b_vec = pr.nd == 0 && wv.rows_vec;
  // Hopper: CUTLASS GEMMs over the stacked weights / gradients when they sit back to back (DendriticLinear's own).
#ifdef PF_HAVE_SM90_CUTLASS
  const int64_t NK = g.Cout * g.Cin;
  const bool sm90 = pr.nd == 0 && (pr.dtype == PF_FLOAT16 || pr.dtype == PF_BFLOAT16) && g.Cin % 8 == 0 &&
                    RN % 8 == 0 && g.P <= 0x7fffffff && RN <= 0x7fffffff && sm90_device();
  const bool w_stacked = gp.swk == 1 && gp.swn == g.Cin && aligned16(gp.w) &&
                         (g.D == 0 || (gp.v == static_cast<const char*>(gp.w) + NK * dtype_size(pr.dtype) &&
                                       gp.svk == 1 && gp.svn == g.Cin && gp.svd == NK));
  const bool sm90_dgrad = sm90 && w_stacked && gp.sdx[1] == 1 && gp.sdx[0] % 8 == 0 && aligned16(gp.dx);
#else
  const bool sm90 = false, sm90_dgrad = false;
#endif
  if (g.PIN > 0 && g.Cin > 0)
    check_cuda(pr.fn, "the dX GEMM",
               hopper_or_generic(
                   sm90_dgrad, pr.dtype, [&](auto tag) { return pf::sm90_dgrad<decltype(tag)>(gp, stream); },
                   [&](auto tag) { return pf::launch_dgrad<decltype(tag)>(gp, pr.math, stream); }));

  // 4. dWcat = dZcat^T . X
  pf::WgradParams wp{};
  wp.g = g;
  wp.dz = dz;
  wp.x = x->data;
  for (int i = 0; i < 5; ++i) wp.sx[i] = pr.sx[i];
  wp.dw = dweight->data;
  wp.dv = g.D > 0 ? ddendrite_weight->data : nullptr;
  wp.ws = wsp + pl.off_ws;
  wp.splits = pl.wg_splits;
  wp.k_tiles_per_split = pl.wg_ktps;
  wp.m_tiles = pl.wg_mt;
  wp.n_tiles = pl.wg_nt;
  wp.a_row_fast = g.OPIX == 1;
  wp.b_row_fast = pr.sx[1] == 1 && g.KK == 1;
  wp.epi_row_fast = 0;
  wp.a_vec = vec && RN % vw == 0;
  wp.b_vec = x_rows_vec(pr, wp.x);
  bool sm90_wgrad = false;
#ifdef PF_HAVE_SM90_CUTLASS
  sm90_wgrad = sm90 && g.P > 0 && aligned16(wp.dw) && pr.sx[1] == 1 && pr.sx[0] % 8 == 0 && aligned16(wp.x) &&
               (g.D == 0 || wp.dv == static_cast<char*>(wp.dw) + NK * dtype_size(pr.dtype));
#else
  (void)sm90;
#endif
  if (g.KC > 0 && g.Cout > 0)
    check_cuda(pr.fn, "the dW GEMM",
               hopper_or_generic(
                   sm90_wgrad, pr.dtype, [&](auto tag) { return pf::sm90_wgrad<decltype(tag)>(wp, stream); },
                   [&](auto tag) { return pf::launch_wgrad<decltype(tag)>(wp, pr.math, stream); }));
}

}  // namespace

extern "C" {

const char* pf_last_error(void) { return g_error.c_str(); }

const char* pf_status_string(pf_status status) {
  switch (status) {
    case PF_SUCCESS:
      return "success";
    case PF_ERROR_INVALID_ARGUMENT:
      return "invalid argument";
    case PF_ERROR_UNSUPPORTED:
      return "unsupported";
    case PF_ERROR_CUDA:
      return "CUDA error";
    case PF_ERROR_WORKSPACE:
      return "workspace too small";
  }
  return "unknown status";
}

const char* pf_build_info(void) {
#ifdef PF_HAVE_SM90_CUTLASS
#define PF_CUTLASS_INFO " cutlass=sm90a"
#else
#define PF_CUTLASS_INFO " cutlass=off"
#endif
  return "archs=" PF_CUDA_ARCHS " nvcc=" PF_NVCC_VERSION " max_dendrites=127 fused_dz_max_d=8" PF_CUTLASS_INFO;
}

pf_status pf_linear_forward(pf_dtype dtype, pf_activation activation, int allow_tf32, const pf_tensor* x,
                            const pf_tensor* weight, const pf_tensor* bias, const pf_tensor* dendrite_weight,
                            const pf_tensor* dendrite_bias, const pf_tensor* gate, const pf_tensor* cascade,
                            const pf_tensor* y, const pf_tensor* h, cudaStream_t stream) {
  return guarded([&] {
    const Problem pr = linear_problem("pf_linear_forward", dtype, activation, allow_tf32, x, weight, dendrite_weight);
    run_forward(pr, x, weight, bias, dendrite_weight, dendrite_bias, gate, cascade, y, h, stream);
  });
}

int pf_sm90_max_d(void) {
#ifdef PF_HAVE_SM90_CUTLASS
  return pf::kSm90MaxR - 1;
#else
  return -1;
#endif
}

size_t pf_linear_packed_bytes(pf_dtype dtype, const pf_tensor* weight, const pf_tensor* dendrite_weight) {
  size_t bytes = 0;
  const pf_status st = guarded([&] {
    const Problem pr = weights_problem("pf_linear_packed_bytes", dtype, weight, dendrite_weight);
    bytes = sm90_packed_bytes(pr);
  });
  return st == PF_SUCCESS ? bytes : 0;
}

pf_status pf_linear_pack(pf_dtype dtype, const pf_tensor* weight, const pf_tensor* dendrite_weight, void* packed,
                         size_t packed_bytes, cudaStream_t stream) {
  return guarded([&] {
#ifdef PF_HAVE_SM90_CUTLASS
    const Problem pr = weights_problem("pf_linear_pack", dtype, weight, dendrite_weight);
    need_packed(pr, packed, packed_bytes);
    const Checker ck{pr.fn};
    pf::FwdParams p{};
    p.g = pr.g;
    p.w = weight->data;
    weight_strides(ck, "weight", weight, 0, &p.swn, &p.swk);
    if (pr.g.D > 0) {
      p.v = dendrite_weight->data;
      p.svd = dendrite_weight->strides[0];
      weight_strides(ck, "dendrite_weight", dendrite_weight, 1, &p.svn, &p.svk);
    }
    p.bno = pf::sm90_neurons_per_tile(pr.g.R);
    const cudaError_t e =
        dtype == PF_FLOAT16 ? pf::sm90_pack<__half>(p, packed, stream) : pf::sm90_pack<__nv_bfloat16>(p, packed, stream);
    check_cuda(pr.fn, "the weight packing kernel", e);
#else
    (void)dtype, (void)dendrite_weight, (void)packed, (void)packed_bytes, (void)stream;
    (void)weight;
    fail(PF_ERROR_UNSUPPORTED, "pf_linear_pack: this build has no Hopper path (built without CUTLASS)");
#endif
  });
}

pf_status pf_linear_forward_packed(pf_dtype dtype, pf_activation activation, const pf_tensor* x,
                                   const pf_tensor* weight, const pf_tensor* bias, const pf_tensor* dendrite_weight,
                                   const pf_tensor* dendrite_bias, const pf_tensor* gate, const pf_tensor* cascade,
                                   const void* packed, size_t packed_bytes, const pf_tensor* y, const pf_tensor* h,
                                   cudaStream_t stream) {
  return guarded([&] {
    const Problem pr = linear_problem("pf_linear_forward_packed", dtype, activation, 0, x, weight, dendrite_weight);
    need_packed(pr, packed, packed_bytes);
    pf::FwdParams p = forward_params(pr, x, weight, bias, dendrite_weight, dendrite_bias, gate, cascade, y, h);
    if (!(pr.sx[1] == 1 || pr.g.Cin == 1) || pr.sx[0] % 8 != 0 || !aligned16(x->data))
      fail(PF_ERROR_INVALID_ARGUMENT, std::string(pr.fn) + ": argument 'x' (shape " + shape_str(x) +
                                          ") must have unit stride along in_features, a row stride that is a multiple "
                                          "of 8 and 16-byte aligned data for the TMA loads, got strides [" +
                                          std::to_string(pr.sx[0]) + ", " + std::to_string(pr.sx[1]) + "]");
    if (pr.g.P == 0 || pr.g.Cout == 0) return;
#ifdef PF_HAVE_SM90_CUTLASS
    if (pr.g.P > 0x7fffffff)
      fail(PF_ERROR_UNSUPPORTED, std::string(pr.fn) + ": at most 2^31-1 rows of x, got " + std::to_string(pr.g.P));
    p.bno = pf::sm90_neurons_per_tile(pr.g.R);
    p.epi_staged = sm90_staged_epilogue(p);
    const auto run = [&](auto tag) {
      using T = decltype(tag);
      switch (sm90_schedule(pr.g)) {
        case pf::kSm90PingPong:
          return pf::sm90_linear_fwd<T, pf::kSm90PingPong>(p, packed, stream);
        default:
          return pf::sm90_linear_fwd<T, pf::kSm90Cooperative>(p, packed, stream);
      }
    };
    check_cuda(pr.fn, "the Hopper forward kernel", dtype == PF_FLOAT16 ? run(__half{}) : run(__nv_bfloat16{}));
#else
    (void)p, (void)stream;
#endif
  });
}

pf_status pf_linear_backward(pf_dtype dtype, pf_activation activation, int allow_tf32, const pf_tensor* grad_y,
                             const pf_tensor* x, const pf_tensor* weight, const pf_tensor* dendrite_weight,
                             const pf_tensor* gate, const pf_tensor* cascade, const pf_tensor* h, const pf_tensor* dx,
                             const pf_tensor* dweight, const pf_tensor* dbias, const pf_tensor* ddendrite_weight,
                             const pf_tensor* ddendrite_bias, const pf_tensor* dgate, const pf_tensor* dcascade,
                             void* workspace, size_t* workspace_bytes, cudaStream_t stream) {
  return guarded([&] {
    const Problem pr = linear_problem("pf_linear_backward", dtype, activation, allow_tf32, x, weight, dendrite_weight);
    run_backward(pr, grad_y, x, weight, dendrite_weight, gate, cascade, h, dx, dweight, dbias, ddendrite_weight,
                 ddendrite_bias, dgate, dcascade, workspace, workspace_bytes, stream);
  });
}

pf_status pf_conv_forward(pf_dtype dtype, pf_activation activation, int allow_tf32, const pf_conv_geometry* geometry,
                          const pf_tensor* x, const pf_tensor* weight, const pf_tensor* bias,
                          const pf_tensor* dendrite_weight, const pf_tensor* dendrite_bias, const pf_tensor* gate,
                          const pf_tensor* cascade, const pf_tensor* y, const pf_tensor* h, cudaStream_t stream) {
  return guarded([&] {
    const Problem pr =
        conv_problem("pf_conv_forward", dtype, activation, allow_tf32, geometry, x, weight, dendrite_weight);
    run_forward(pr, x, weight, bias, dendrite_weight, dendrite_bias, gate, cascade, y, h, stream);
  });
}

pf_status pf_conv_backward(pf_dtype dtype, pf_activation activation, int allow_tf32, const pf_conv_geometry* geometry,
                           const pf_tensor* grad_y, const pf_tensor* x, const pf_tensor* weight,
                           const pf_tensor* dendrite_weight, const pf_tensor* gate, const pf_tensor* cascade,
                           const pf_tensor* h, const pf_tensor* dx, const pf_tensor* dweight, const pf_tensor* dbias,
                           const pf_tensor* ddendrite_weight, const pf_tensor* ddendrite_bias, const pf_tensor* dgate,
                           const pf_tensor* dcascade, void* workspace, size_t* workspace_bytes, cudaStream_t stream) {
  return guarded([&] {
    const Problem pr =
        conv_problem("pf_conv_backward", dtype, activation, allow_tf32, geometry, x, weight, dendrite_weight);
    run_backward(pr, grad_y, x, weight, dendrite_weight, gate, cascade, h, dx, dweight, dbias, ddendrite_weight,
                 ddendrite_bias, dgate, dcascade, workspace, workspace_bytes, stream);
  });
}

}  // extern "C"
