// __half instantiation of the Hopper backward GEMMs (sm90_grad.cuh), one dtype per translation unit.
#include "sm90_grad.cuh"

namespace pf {
template cudaError_t sm90_dgrad<__half>(const DgradParams&, cudaStream_t);
template cudaError_t sm90_wgrad<__half>(const WgradParams&, cudaStream_t);
}  // namespace pf
