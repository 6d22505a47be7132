// pybind11 module pai_fast._C over the C interface in include/pai_fast/dendritic.h.
//
// No torch headers: tensors arrive as (data_ptr: int, sizes: tuple, strides: tuple) or None, the stream as
// the integer value of a cudaStream_t, so one build serves every torch version. The Python adapter
// pai_fast/cuda_backend.py does the torch side (allocation, current stream, device guard).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>

#include "pai_fast/dendritic.h"

#ifndef PF_MODULE_NAME
#define PF_MODULE_NAME _C
#endif

namespace py = pybind11;

namespace {

struct TensorArg {
  pf_tensor t{};
  bool present = false;
  const pf_tensor* get() const { return present ? &t : nullptr; }
};

// Parsed with the CPython API directly: this runs for ~15 tensors per call, on the per-call critical path.
int64_t as_i64(PyObject* o, const char* name, const char* what) {
  const long long v = PyLong_AsLongLong(o);
  if (v == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    throw py::type_error(std::string("pai_fast._C: argument '") + name + "': " + what + " must be integers");
  }
  return static_cast<int64_t>(v);
}

TensorArg to_tensor(const py::handle& obj, const char* name) {
  TensorArg a;
  if (obj.is_none()) return a;
  PyObject* o = obj.ptr();
  if (!PyTuple_Check(o) || PyTuple_GET_SIZE(o) != 3)
    throw py::type_error(std::string("pai_fast._C: argument '") + name +
                         "' must be None or a tuple (data_ptr, sizes, strides)");
  a.present = true;
  PyObject* ptr = PyTuple_GET_ITEM(o, 0);
  const unsigned long long addr = PyLong_AsUnsignedLongLong(ptr);
  if (PyErr_Occurred()) {
    PyErr_Clear();
    throw py::type_error(std::string("pai_fast._C: argument '") + name + "': data_ptr must be a non-negative int");
  }
  a.t.data = reinterpret_cast<void*>(static_cast<uintptr_t>(addr));
  py::object sizes = py::reinterpret_steal<py::object>(PySequence_Fast(PyTuple_GET_ITEM(o, 1), "sizes"));
  py::object strides = py::reinterpret_steal<py::object>(PySequence_Fast(PyTuple_GET_ITEM(o, 2), "strides"));
  if (!sizes || !strides) {
    PyErr_Clear();
    throw py::type_error(std::string("pai_fast._C: argument '") + name + "': sizes and strides must be sequences");
  }
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(sizes.ptr());
  if (n > PF_MAX_DIMS || PySequence_Fast_GET_SIZE(strides.ptr()) != n)
    throw py::value_error(std::string("pai_fast._C: argument '") + name + "' has " + std::to_string(n) + " sizes and " +
                          std::to_string(PySequence_Fast_GET_SIZE(strides.ptr())) +
                          " strides; expected equal counts <= " + std::to_string(PF_MAX_DIMS));
  a.t.ndim = static_cast<int32_t>(n);
  PyObject** sz = PySequence_Fast_ITEMS(sizes.ptr());
  PyObject** st = PySequence_Fast_ITEMS(strides.ptr());
  for (Py_ssize_t i = 0; i < n; ++i) {
    a.t.sizes[i] = as_i64(sz[i], name, "sizes");
    a.t.strides[i] = as_i64(st[i], name, "strides");
  }
  return a;
}

int g_device_count = -1;
std::string g_device_error;

int device_count() {
#ifdef PF_EMULATE
  return 0;
#else
  if (g_device_count < 0) {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      n = 0;
      g_device_error = std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
      cudaGetLastError();  // clear the sticky-free error state of the runtime
    }
    g_device_count = n;
  }
  return g_device_count;
#endif
}

void require_gpu() {
#ifndef PF_EMULATE
  if (device_count() <= 0)
    throw std::runtime_error(
        "pai_fast._C: no CUDA GPU is available, so the 'cuda' backend cannot run" +
        (g_device_error.empty() ? std::string(" (cudaGetDeviceCount returned 0)")
                                : " (cudaGetDeviceCount: " + g_device_error + ")") +
        ". Use backend='torch' or 'triton', or run on a machine with an NVIDIA GPU (sm_80 or newer).");
#endif
}

void raise_status(pf_status s) {
  if (s == PF_SUCCESS) return;
  const std::string msg = std::string(pf_last_error()) + " [" + pf_status_string(s) + "]";
  if (s == PF_ERROR_INVALID_ARGUMENT) throw py::value_error(msg);
  if (s == PF_ERROR_UNSUPPORTED) throw std::runtime_error("unsupported: " + msg);
  throw std::runtime_error(msg);
}

cudaStream_t to_stream(uint64_t s) { return reinterpret_cast<cudaStream_t>(static_cast<uintptr_t>(s)); }

pf_conv_geometry to_geom(int nd, const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
                         const std::vector<int64_t>& dilation) {
  if (nd < 1 || nd > 3 || stride.size() != static_cast<size_t>(nd) || padding.size() != static_cast<size_t>(nd) ||
      dilation.size() != static_cast<size_t>(nd))
    throw py::value_error(
        "pai_fast._C: conv geometry needs nd in 1..3 and nd entries each of stride, padding, dilation; got nd=" +
        std::to_string(nd) + ", " + std::to_string(stride.size()) + "/" + std::to_string(padding.size()) + "/" +
        std::to_string(dilation.size()) + " entries");
  pf_conv_geometry g{};
  g.nd = nd;
  for (int i = 0; i < nd; ++i) {
    g.stride[i] = stride[static_cast<size_t>(i)];
    g.padding[i] = padding[static_cast<size_t>(i)];
    g.dilation[i] = dilation[static_cast<size_t>(i)];
  }
  return g;
}

py::dict build_info() {
  py::dict d;
  const std::string info = pf_build_info();
  d["info"] = info;
#ifdef PF_CUDA_ARCHS
  d["archs"] = std::string(PF_CUDA_ARCHS);
#endif
#ifdef PF_NVCC_VERSION
  d["nvcc_version"] = std::string(PF_NVCC_VERSION);
#endif
  d["max_dendrites"] = PF_MAX_DENDRITES;
#ifdef PF_EMULATE
  d["emulated"] = true;
  d["cuda_runtime_version"] = 0;
  d["cuda_driver_version"] = 0;
#else
  d["emulated"] = false;
  int rt = 0, drv = 0;
  if (cudaRuntimeGetVersion(&rt) != cudaSuccess) rt = 0;
  if (cudaDriverGetVersion(&drv) != cudaSuccess) drv = 0;
  cudaGetLastError();
  d["cuda_runtime_version"] = rt;
  d["cuda_driver_version"] = drv;
#endif
  return d;
}

}  // namespace

PYBIND11_MODULE(PF_MODULE_NAME, m) {
  m.doc() = "pai_fast CUDA kernels (torch-free): fused dendritic Linear/Conv forward and backward";
  m.attr("DTYPES") =
      py::dict(py::arg("float32") = 0, py::arg("float16") = 1, py::arg("bfloat16") = 2, py::arg("float64") = 3);
  m.attr("ACTIVATIONS") =
      py::dict(py::arg("identity") = 0, py::arg("sigmoid") = 1, py::arg("tanh") = 2, py::arg("relu") = 3);
  m.attr("MAX_DENDRITES") = PF_MAX_DENDRITES;
#ifdef PF_EMULATE
  m.attr("EMULATED") = true;  // CPU emulation build for tests: pointers are host pointers
#else
  m.attr("EMULATED") = false;
#endif
  m.def("build_info", &build_info, "Build facts: archs, nvcc version, CUDA runtime/driver versions.");
  m.def("device_count", &device_count, "Number of CUDA devices (0 when none or no driver); never raises.");
  m.def("require_gpu", &require_gpu, "Raise RuntimeError with a clear message when no CUDA GPU is present.");

  m.def(
      "linear_forward",
      [](int dtype, int act, bool allow_tf32, py::handle x, py::handle w, py::handle b, py::handle v, py::handle vb,
         py::handle g, py::handle c, py::handle y, py::handle h, uint64_t stream) {
        require_gpu();
        const TensorArg X = to_tensor(x, "x"), W = to_tensor(w, "weight"), B = to_tensor(b, "bias"),
                        V = to_tensor(v, "dendrite_weight"), VB = to_tensor(vb, "dendrite_bias"),
                        G = to_tensor(g, "gate"), C = to_tensor(c, "cascade"), Y = to_tensor(y, "y"),
                        H = to_tensor(h, "h");
        raise_status(pf_linear_forward(static_cast<pf_dtype>(dtype), static_cast<pf_activation>(act),
                                       allow_tf32 ? 1 : 0, X.get(), W.get(), B.get(), V.get(), VB.get(), G.get(),
                                       C.get(), Y.get(), H.get(), to_stream(stream)));
      },
      py::arg("dtype"), py::arg("activation"), py::arg("allow_tf32"), py::arg("x"), py::arg("weight"), py::arg("bias"),
      py::arg("dendrite_weight"), py::arg("dendrite_bias"), py::arg("gate"), py::arg("cascade"), py::arg("y"),
      py::arg("h"), py::arg("stream"));

  m.def("sm90_max_d", &pf_sm90_max_d, "Largest D of the Hopper packed-weight forward in this build (-1: not built).");
  m.def(
      "linear_packed_bytes",
      [](int dtype, py::handle w, py::handle v) -> uint64_t {
        const TensorArg W = to_tensor(w, "weight"), V = to_tensor(v, "dendrite_weight");
        return pf_linear_packed_bytes(static_cast<pf_dtype>(dtype), W.get(), V.get());
      },
      py::arg("dtype"), py::arg("weight"), py::arg("dendrite_weight"),
      "Bytes of the packed weights of the Hopper forward on the current device; 0 when that path does not apply.");
  m.def(
      "linear_pack",
      [](int dtype, py::handle w, py::handle v, uint64_t packed, uint64_t packed_bytes, uint64_t stream) {
        require_gpu();
        const TensorArg W = to_tensor(w, "weight"), V = to_tensor(v, "dendrite_weight");
        raise_status(pf_linear_pack(static_cast<pf_dtype>(dtype), W.get(), V.get(),
                                    reinterpret_cast<void*>(static_cast<uintptr_t>(packed)), packed_bytes,
                                    to_stream(stream)));
      },
      py::arg("dtype"), py::arg("weight"), py::arg("dendrite_weight"), py::arg("packed"), py::arg("packed_bytes"),
      py::arg("stream"));
  m.def(
      "linear_forward_packed",
      [](int dtype, int act, py::handle x, py::handle w, py::handle b, py::handle v, py::handle vb, py::handle g,
         py::handle c, uint64_t packed, uint64_t packed_bytes, py::handle y, py::handle h, uint64_t stream) {
        require_gpu();
        const TensorArg X = to_tensor(x, "x"), W = to_tensor(w, "weight"), B = to_tensor(b, "bias"),
                        V = to_tensor(v, "dendrite_weight"), VB = to_tensor(vb, "dendrite_bias"),
                        G = to_tensor(g, "gate"), C = to_tensor(c, "cascade"), Y = to_tensor(y, "y"),
                        H = to_tensor(h, "h");
        raise_status(pf_linear_forward_packed(static_cast<pf_dtype>(dtype), static_cast<pf_activation>(act), X.get(),
                                              W.get(), B.get(), V.get(), VB.get(), G.get(), C.get(),
                                              reinterpret_cast<const void*>(static_cast<uintptr_t>(packed)),
                                              packed_bytes, Y.get(), H.get(), to_stream(stream)));
      },
      py::arg("dtype"), py::arg("activation"), py::arg("x"), py::arg("weight"), py::arg("bias"),
      py::arg("dendrite_weight"), py::arg("dendrite_bias"), py::arg("gate"), py::arg("cascade"), py::arg("packed"),
      py::arg("packed_bytes"), py::arg("y"), py::arg("h"), py::arg("stream"));

  m.def(
      "linear_backward",
      [](int dtype, int act, bool allow_tf32, py::handle dy, py::handle x, py::handle w, py::handle v, py::handle g,
         py::handle c, py::handle h, py::handle dx, py::handle dw, py::handle db, py::handle dv, py::handle dvb,
         py::handle dg, py::handle dc, py::object workspace, uint64_t workspace_bytes, uint64_t stream) -> uint64_t {
        const TensorArg DY = to_tensor(dy, "grad_y"), X = to_tensor(x, "x"), W = to_tensor(w, "weight"),
                        V = to_tensor(v, "dendrite_weight"), G = to_tensor(g, "gate"), C = to_tensor(c, "cascade"),
                        H = to_tensor(h, "h"), DX = to_tensor(dx, "dx"), DW = to_tensor(dw, "dweight"),
                        DB = to_tensor(db, "dbias"), DV = to_tensor(dv, "ddendrite_weight"),
                        DVB = to_tensor(dvb, "ddendrite_bias"), DG = to_tensor(dg, "dgate"),
                        DC = to_tensor(dc, "dcascade");
        void* ws =
            workspace.is_none() ? nullptr : reinterpret_cast<void*>(static_cast<uintptr_t>(workspace.cast<uint64_t>()));
        if (ws != nullptr) require_gpu();
        size_t bytes = static_cast<size_t>(workspace_bytes);
        raise_status(pf_linear_backward(static_cast<pf_dtype>(dtype), static_cast<pf_activation>(act),
                                        allow_tf32 ? 1 : 0, DY.get(), X.get(), W.get(), V.get(), G.get(), C.get(),
                                        H.get(), DX.get(), DW.get(), DB.get(), DV.get(), DVB.get(), DG.get(), DC.get(),
                                        ws, &bytes, to_stream(stream)));
        return bytes;
      },
      "With workspace=None: return the workspace bytes needed (launches nothing). Otherwise run the backward.",
      py::arg("dtype"), py::arg("activation"), py::arg("allow_tf32"), py::arg("grad_y"), py::arg("x"),
      py::arg("weight"), py::arg("dendrite_weight"), py::arg("gate"), py::arg("cascade"), py::arg("h"), py::arg("dx"),
      py::arg("dweight"), py::arg("dbias"), py::arg("ddendrite_weight"), py::arg("ddendrite_bias"), py::arg("dgate"),
      py::arg("dcascade"), py::arg("workspace"), py::arg("workspace_bytes"), py::arg("stream"));

  m.def(
      "conv_forward",
      [](int dtype, int act, bool allow_tf32, int nd, std::vector<int64_t> stride, std::vector<int64_t> padding,
         std::vector<int64_t> dilation, py::handle x, py::handle w, py::handle b, py::handle v, py::handle vb,
         py::handle g, py::handle c, py::handle y, py::handle h, uint64_t stream) {
        require_gpu();
        const pf_conv_geometry geo = to_geom(nd, stride, padding, dilation);
        const TensorArg X = to_tensor(x, "x"), W = to_tensor(w, "weight"), B = to_tensor(b, "bias"),
                        V = to_tensor(v, "dendrite_weight"), VB = to_tensor(vb, "dendrite_bias"),
                        G = to_tensor(g, "gate"), C = to_tensor(c, "cascade"), Y = to_tensor(y, "y"),
                        H = to_tensor(h, "h");
        raise_status(pf_conv_forward(static_cast<pf_dtype>(dtype), static_cast<pf_activation>(act), allow_tf32 ? 1 : 0,
                                     &geo, X.get(), W.get(), B.get(), V.get(), VB.get(), G.get(), C.get(), Y.get(),
                                     H.get(), to_stream(stream)));
      },
      py::arg("dtype"), py::arg("activation"), py::arg("allow_tf32"), py::arg("nd"), py::arg("stride"),
      py::arg("padding"), py::arg("dilation"), py::arg("x"), py::arg("weight"), py::arg("bias"),
      py::arg("dendrite_weight"), py::arg("dendrite_bias"), py::arg("gate"), py::arg("cascade"), py::arg("y"),
      py::arg("h"), py::arg("stream"));

  m.def(
      "conv_backward",
      [](int dtype, int act, bool allow_tf32, int nd, std::vector<int64_t> stride, std::vector<int64_t> padding,
         std::vector<int64_t> dilation, py::handle dy, py::handle x, py::handle w, py::handle v, py::handle g,
         py::handle c, py::handle h, py::handle dx, py::handle dw, py::handle db, py::handle dv, py::handle dvb,
         py::handle dg, py::handle dc, py::object workspace, uint64_t workspace_bytes, uint64_t stream) -> uint64_t {
        const pf_conv_geometry geo = to_geom(nd, stride, padding, dilation);
        const TensorArg DY = to_tensor(dy, "grad_y"), X = to_tensor(x, "x"), W = to_tensor(w, "weight"),
                        V = to_tensor(v, "dendrite_weight"), G = to_tensor(g, "gate"), C = to_tensor(c, "cascade"),
                        H = to_tensor(h, "h"), DX = to_tensor(dx, "dx"), DW = to_tensor(dw, "dweight"),
                        DB = to_tensor(db, "dbias"), DV = to_tensor(dv, "ddendrite_weight"),
                        DVB = to_tensor(dvb, "ddendrite_bias"), DG = to_tensor(dg, "dgate"),
                        DC = to_tensor(dc, "dcascade");
        void* ws =
            workspace.is_none() ? nullptr : reinterpret_cast<void*>(static_cast<uintptr_t>(workspace.cast<uint64_t>()));
        if (ws != nullptr) require_gpu();
        size_t bytes = static_cast<size_t>(workspace_bytes);
        raise_status(pf_conv_backward(static_cast<pf_dtype>(dtype), static_cast<pf_activation>(act), allow_tf32 ? 1 : 0,
                                      &geo, DY.get(), X.get(), W.get(), V.get(), G.get(), C.get(), H.get(), DX.get(),
                                      DW.get(), DB.get(), DV.get(), DVB.get(), DG.get(), DC.get(), ws, &bytes,
                                      to_stream(stream)));
        return bytes;
      },
      "With workspace=None: return the workspace bytes needed (launches nothing). Otherwise run the backward.",
      py::arg("dtype"), py::arg("activation"), py::arg("allow_tf32"), py::arg("nd"), py::arg("stride"),
      py::arg("padding"), py::arg("dilation"), py::arg("grad_y"), py::arg("x"), py::arg("weight"),
      py::arg("dendrite_weight"), py::arg("gate"), py::arg("cascade"), py::arg("h"), py::arg("dx"), py::arg("dweight"),
      py::arg("dbias"), py::arg("ddendrite_weight"), py::arg("ddendrite_bias"), py::arg("dgate"), py::arg("dcascade"),
      py::arg("workspace"), py::arg("workspace_bytes"), py::arg("stream"));
}
