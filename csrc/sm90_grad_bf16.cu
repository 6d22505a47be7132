// __nv_bfloat16 instantiation of the Hopper backward GEMMs (sm90_grad.cuh), one dtype per translation unit.
#include "sm90_grad.cuh"

namespace pf {
template cudaError_t sm90_dgrad<__nv_bfloat16>(const DgradParams&, cudaStream_t);
template cudaError_t sm90_wgrad<__nv_bfloat16>(const WgradParams&, cudaStream_t);
}  // namespace pf
