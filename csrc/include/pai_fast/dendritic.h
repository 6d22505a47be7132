/*
 * pai_fast: fused dendritic Linear / Conv kernels for CUDA, C interface.
 *
 * Torch-free: callers pass raw device pointers, sizes and strides (in elements) and a cudaStream_t.
 * Usable from C and C++ without Python (see csrc/ctest.cpp); the Python module pai_fast._C wraps it.
 *
 * Math (N = out features/channels, D = number of dendrites, act in {sigmoid, tanh, relu, identity}):
 *   z_0 = x W^T + b            u_i = x V_i^T + c_i                      (i = 0..D-1)
 *   s_i = u_i + sum_{j<i} B[i,j] * a_j      a_i = act(s_i)      y = z_0 + sum_i G[i] * a_i
 * G = gate [D,N] and B = cascade [D,D,N] are per output channel, broadcast over batch and space.
 * Backward: dz_0 = dy; for i = D-1..0: da_i = G[i] dy + sum_{k>i} B[k,i] ds_k ; ds_i = da_i act'(a_i);
 *   dG[i] = sum dy a_i ; dB[k,i] = sum ds_k a_i (i<k, other entries 0) ; db = sum dy ; dc_i = sum ds_i ;
 *   dX = dZcat Wcat ; dWcat = dZcat^T X   (Wcat = [W; V_0; ...; V_{D-1}], dZcat = [dy, ds_0, ...]).
 *
 * Forward is one kernel (a K-loop feeding the 1+D accumulators of one output tile, then bias, cascade,
 * activation and gated sum in the epilogue). Backward is an elementwise dZ kernel with deterministic
 * per-block partial sums (no float atomics), a fixed-order reduction kernel, and two GEMMs.
 * Accumulation is fp32 (fp64 for fp64 data). All launches are asynchronous on `stream` and contain no
 * host synchronisation (CUDA-graph safe).
 *
 * Conventions
 *  - Every pf_tensor is a strided view: element (i0, i1, ...) lives at data + sum_k i_k * strides[k].
 *    Strides may be 0 (broadcast) for inputs; outputs must not overlap themselves.
 *  - Optional tensors are passed as NULL.
 *  - All tensors of one call have the same dtype and live on the current CUDA device.
 *  - Conv spatial dims of y, h and grad_y must be "flattenable" (stride_w, stride_h = OW*stride_w, ...),
 *    which NCHW-contiguous and channels_last tensors are. Conv weights must have flattenable trailing
 *    dims (contiguous parameters are). Gradient outputs of weights/biases/gate/cascade must be contiguous.
 *  - On error a function returns a non-zero pf_status; pf_last_error() then holds a message naming the
 *    argument, what was expected and what came (thread-local, valid until the next call).
 */
#ifndef PAI_FAST_DENDRITIC_H
#define PAI_FAST_DENDRITIC_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PF_MAX_DIMS 6
/* Largest D the fused kernels accept: 1 + D branch accumulators of one neuron must fit one tile. */
#define PF_MAX_DENDRITES 127

typedef enum pf_dtype { PF_FLOAT32 = 0, PF_FLOAT16 = 1, PF_BFLOAT16 = 2, PF_FLOAT64 = 3 } pf_dtype;

/* Same codes as pai_fast.activations.FUSED_CODES. */
typedef enum pf_activation { PF_ACT_IDENTITY = 0, PF_ACT_SIGMOID = 1, PF_ACT_TANH = 2, PF_ACT_RELU = 3 } pf_activation;

typedef enum pf_status {
  PF_SUCCESS = 0,
  PF_ERROR_INVALID_ARGUMENT = 1, /* a shape, stride, dtype or pointer is wrong */
  PF_ERROR_UNSUPPORTED = 2,      /* valid, but outside what these kernels do (e.g. D > PF_MAX_DENDRITES) */
  PF_ERROR_CUDA = 3,             /* a CUDA runtime call or kernel launch failed */
  PF_ERROR_WORKSPACE = 4         /* workspace missing or too small */
} pf_status;

typedef struct pf_tensor {
  void* data; /* device pointer; may be NULL only if the tensor has no elements */
  int32_t ndim;
  int64_t sizes[PF_MAX_DIMS];
  int64_t strides[PF_MAX_DIMS]; /* in elements, not bytes */
} pf_tensor;

/* nd = 1, 2 or 3 spatial dims; only the first nd entries of each array are read. groups = 1 only. */
typedef struct pf_conv_geometry {
  int32_t nd;
  int64_t stride[3];
  int64_t padding[3]; /* explicit symmetric zero padding */
  int64_t dilation[3];
} pf_conv_geometry;

/* Thread-local message describing the last error of a pf_* call on this thread ("" if none). */
const char* pf_last_error(void);
const char* pf_status_string(pf_status status);
/* Build facts: "archs=80;90 nvcc=13.0.88 ..." (static string). */
const char* pf_build_info(void);

/*
 * Dendritic Linear forward.
 *   x [M,K], weight [N,K], bias [N] or NULL, dendrite_weight [D,N,K] (NULL or any data if D == 0),
 *   dendrite_bias [D,N] (NULL iff bias is NULL), gate [D,N], cascade [D,D,N],
 *   y [M,N] (output), h [M,D,N] (output: activated dendrite outputs; NULL in inference).
 *   D is taken from dendrite_weight->sizes[0] (a NULL dendrite_weight means D = 0).
 *   allow_tf32: fp32 inputs may use TF32 tensor cores (ignored for other dtypes).
 */
pf_status pf_linear_forward(pf_dtype dtype, pf_activation activation, int allow_tf32, const pf_tensor* x,
                            const pf_tensor* weight, const pf_tensor* bias, const pf_tensor* dendrite_weight,
                            const pf_tensor* dendrite_bias, const pf_tensor* gate, const pf_tensor* cascade,
                            const pf_tensor* y, const pf_tensor* h, cudaStream_t stream);

/*
 * Hopper Linear forward over packed weights: a CUTLASS TMA + wgmma mainloop with the same fused epilogue, for
 * builds with CUTLASS (CMake PAI_FAST_CUTLASS) on sm_90 devices, fp16/bf16, D <= pf_sm90_max_d(), in_features % 8
 * == 0, and x with unit stride along in_features, a row stride that is a multiple of 8 and 16-byte aligned data.
 * The weights are packed once into a buffer the caller owns (neuron-interleaved, see csrc/sm90_linear.cuh) and read by
 * every forward until they change; pack again after each update. y and h may have any strides; where out_features %
 * 8 == 0 and y (and h) have unit stride along out_features with 16-byte aligned rows (and branch planes), the epilogue
 * stores them through shared memory as whole 16-byte row segments, which is faster.
 * Environment, read at each call: PAI_FAST_SM90_SCHEDULE=cooperative|pingpong forces the mainloop schedule,
 * PAI_FAST_SM90_EPILOGUE=direct the register-to-global stores, PAI_FAST_CUDA_SM90=0 turns the path off.
 *   pf_sm90_max_d: the largest D this build takes on the path (-1: built without it).
 *   pf_linear_packed_bytes: bytes of the packed weights on the current device, or 0 when the path does not apply
 *     (then use pf_linear_forward). Launches nothing.
 *   pf_linear_pack: writes the packed weights (`packed`: 16-byte aligned, at least pf_linear_packed_bytes).
 *   pf_linear_forward_packed: pf_linear_forward reading the weights from `packed` (weight and dendrite_weight give
 *     the shapes; their data is not read). Fails with PF_ERROR_UNSUPPORTED when the path does not apply.
 */
int pf_sm90_max_d(void);
size_t pf_linear_packed_bytes(pf_dtype dtype, const pf_tensor* weight, const pf_tensor* dendrite_weight);
pf_status pf_linear_pack(pf_dtype dtype, const pf_tensor* weight, const pf_tensor* dendrite_weight, void* packed,
                         size_t packed_bytes, cudaStream_t stream);
pf_status pf_linear_forward_packed(pf_dtype dtype, pf_activation activation, const pf_tensor* x,
                                   const pf_tensor* weight, const pf_tensor* bias, const pf_tensor* dendrite_weight,
                                   const pf_tensor* dendrite_bias, const pf_tensor* gate, const pf_tensor* cascade,
                                   const void* packed, size_t packed_bytes, const pf_tensor* y, const pf_tensor* h,
                                   cudaStream_t stream);

/*
 * Dendritic Linear backward.
 *   grad_y [M,N], x [M,K], weight [N,K], dendrite_weight [D,N,K], gate [D,N], cascade [D,D,N],
 *   h [M,D,N] (the forward's activated outputs; NULL iff D == 0).
 *   Outputs: dx [M,K] (any strides), dweight [N,K], dbias [N] or NULL, ddendrite_weight [D,N,K],
 *   ddendrite_bias [D,N] or NULL, dgate [D,N], dcascade [D,D,N] (entries [k,i] with i >= k are set to 0);
 *   all outputs but dx contiguous.
 *   Workspace: call once with workspace == NULL to get the byte count in *workspace_bytes (nothing is
 *   launched), then again with a device buffer of at least that size (256-byte aligned).
 *   Small layers (1 <= D <= 3, M (1+D) N K <= 2^24) run as one kernel that needs no workspace beyond the
 *   minimum of 256 bytes; others as the dZ kernel, a reduction and two GEMMs. The environment variable
 *   PAI_FAST_CUDA_BACKWARD=onepass|split, read at each call, forces a path (and so the workspace size).
 */
pf_status pf_linear_backward(pf_dtype dtype, pf_activation activation, int allow_tf32, const pf_tensor* grad_y,
                             const pf_tensor* x, const pf_tensor* weight, const pf_tensor* dendrite_weight,
                             const pf_tensor* gate, const pf_tensor* cascade, const pf_tensor* h, const pf_tensor* dx,
                             const pf_tensor* dweight, const pf_tensor* dbias, const pf_tensor* ddendrite_weight,
                             const pf_tensor* ddendrite_bias, const pf_tensor* dgate, const pf_tensor* dcascade,
                             void* workspace, size_t* workspace_bytes, cudaStream_t stream);

/*
 * Dendritic Conv{1,2,3}d forward by implicit GEMM (groups = 1, zero padding).
 *   x [B,Cin,*sp], weight [Cout,Cin,*k], bias [Cout] or NULL, dendrite_weight [D,Cout,Cin,*k],
 *   dendrite_bias [D,Cout] or NULL, gate [D,Cout], cascade [D,D,Cout],
 *   y [B,Cout,*out_sp] (output), h [B,D,Cout,*out_sp] (output or NULL).
 */
pf_status pf_conv_forward(pf_dtype dtype, pf_activation activation, int allow_tf32, const pf_conv_geometry* geometry,
                          const pf_tensor* x, const pf_tensor* weight, const pf_tensor* bias,
                          const pf_tensor* dendrite_weight, const pf_tensor* dendrite_bias, const pf_tensor* gate,
                          const pf_tensor* cascade, const pf_tensor* y, const pf_tensor* h, cudaStream_t stream);

/* Conv backward; shapes as in pf_conv_forward, gradients shaped like their inputs. Workspace as in
 * pf_linear_backward. */
pf_status pf_conv_backward(pf_dtype dtype, pf_activation activation, int allow_tf32, const pf_conv_geometry* geometry,
                           const pf_tensor* grad_y, const pf_tensor* x, const pf_tensor* weight,
                           const pf_tensor* dendrite_weight, const pf_tensor* gate, const pf_tensor* cascade,
                           const pf_tensor* h, const pf_tensor* dx, const pf_tensor* dweight, const pf_tensor* dbias,
                           const pf_tensor* ddendrite_weight, const pf_tensor* ddendrite_bias, const pf_tensor* dgate,
                           const pf_tensor* dcascade, void* workspace, size_t* workspace_bytes, cudaStream_t stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* PAI_FAST_DENDRITIC_H */
