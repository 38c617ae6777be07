// Per-element math of the fused bias + activation op, shared by the CUDA and CPU extensions.
//
//   forward:  y  = clamp(act(x + b) * gain, -c, c)            (clamp only when c >= 0)
//   gradient: dx = dy * act'(x + b) * gain * [|y| < c]
//
// The gradient is computed from the saved output y: for the supported activations
// (linear, leaky ReLU) with gain > 0, sign(y) == sign(x + b), so x need not be kept. The gradient
// is linear in dy with a mask that depends on y only, so its own derivative is the same op
// applied to the incoming gradient: that is what makes second derivatives (R1, path length)
// cheap and exact.
#pragma once

#include "ops_common.h"

namespace medsemgan {

enum BiasActKind : int { kActLinear = 0, kActLrelu = 1 };

// x (and y / dx) viewed as [outer, channels, inner]; b has `channels` entries (or is null).
struct BiasActParams {
    const void* x;     // forward: input; gradient: incoming gradient dy
    const void* b;     // bias in the compute type (float for 16/32-bit data, double for 64-bit), or null
    const void* ref;   // gradient only: the saved forward output y
    void* out;         // forward: y; gradient: dx
    long long outer;
    long long channels;
    long long inner;
    int dtype;         // DType of x, ref and out
    int act;           // BiasActKind
    double alpha;
    double gain;
    double clamp;      // < 0: no clamp
    double* row_sums;  // CPU gradient only: sum of dx over each [outer, channel] row (for the
                       // bias gradient, in the same pass), or null
};

template <int ACT, bool CLAMP, typename T>
MSG_HD T bias_act_forward(T v, T alpha, T gain, T clamp) {
    if (ACT == kActLrelu) v = v > T(0) ? v : v * alpha;
    v = v * gain;
    if (CLAMP) v = v > clamp ? clamp : (v < -clamp ? -clamp : v);
    return v;
}

template <int ACT, bool CLAMP, typename T>
MSG_HD T bias_act_gradient(T dy, T y, T alpha, T gain, T clamp) {
    T slope = gain;
    if (ACT == kActLrelu) slope = y > T(0) ? gain : gain * alpha;
    if (CLAMP) slope = (y > -clamp && y < clamp) ? slope : T(0);
    return dy * slope;
}

}  // namespace medsemgan
