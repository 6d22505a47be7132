// __half ping-pong instantiation of the Hopper Linear forward (sm90_linear.cuh), in its own translation unit so the
// CUTLASS kernels compile in parallel.
#include "sm90_linear.cuh"

namespace pf {
template cudaError_t sm90_linear_fwd<__half, kSm90PingPong>(const FwdParams&, const void*, cudaStream_t);
}  // namespace pf
