// Launchers implemented in the .cu files, called from cuda_ops.cpp. Plain structs and a raw stream
// handle cross this boundary, so nvcc never parses torch headers (that cut build time ~6x).
#pragma once

#include <cuda_runtime_api.h>

#include "bias_act.h"
#include "upfirdn2d.h"

namespace medsemgan {

cudaError_t launch_bias_act(const BiasActParams& p, cudaStream_t stream);   // gradient when p.ref != null
cudaError_t launch_upfirdn2d(const Upfirdn2dParams& p, cudaStream_t stream);

}  // namespace medsemgan
