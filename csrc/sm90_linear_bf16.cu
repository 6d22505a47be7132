// __nv_bfloat16 instantiation of the Hopper Linear forward (sm90_linear.cuh); one dtype per translation unit so the two
// CUTLASS kernels compile in parallel.
#include "sm90_linear.cuh"

namespace pf {
template cudaError_t sm90_pack<__nv_bfloat16>(const FwdParams&, void*, cudaStream_t);
template cudaError_t sm90_linear_fwd<__nv_bfloat16, kSm90Cooperative>(const FwdParams&, const void*, cudaStream_t);
}  // namespace pf
