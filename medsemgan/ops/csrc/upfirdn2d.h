// Per-output-pixel math of upfirdn2d, shared by the CUDA and CPU extensions.
//
// Output pixel (oy, ox) of one [H, W] plane: the input is upsampled by zero insertion (up),
// padded (pad_x0/pad_y0 on the leading side; negative = crop), correlated with the kernel k
// (the caller passes the filter already flipped when needed and scaled by the gain), and sampled
// every `down` pixels. Only taps that land on real (non-inserted) samples are visited, so an
// up=2 4x4 filter costs 4 multiply-adds per output pixel, not 16.
#pragma once

#include "ops_common.h"

namespace medsemgan {

struct Upfirdn2dParams {
    const void* x;     // [planes, in_h, in_w], contiguous (or [N, in_h, in_w, C], see channels_last)
    const void* k;     // [k_h, k_w] correlation kernel in the compute type
    void* out;         // [planes, out_h, out_w], contiguous
    long long planes;
    int in_h, in_w, out_h, out_w;
    int up_x, up_y, down_x, down_y;
    int pad_x0, pad_y0;
    int k_h, k_w;
    int dtype;         // DType of x and out
    int channels;      // C
    int channels_last; // 1: x and out are [N, H, W, C] in memory (CPU extension only)
};

// First tap index t >= 0 such that (u0 + t) is a non-negative multiple of `up`.
MSG_HD int upfirdn2d_first_tap(int u0, int up) {
    int t = u0 < 0 ? -u0 : 0;
    int r = (u0 + t) % up;
    return r == 0 ? t : t + (up - r);
}

// ACC: accumulation/compute type; S: storage type of x (converted with Convert<ACC, S>).
template <typename ACC, typename S>
MSG_HD ACC upfirdn2d_pixel(const S* plane, const ACC* k, const Upfirdn2dParams& p, int oy, int ox) {
    const int uy0 = oy * p.down_y - p.pad_y0;  // upsampled-signal coordinate under tap 0
    const int ux0 = ox * p.down_x - p.pad_x0;
    const int ty0 = upfirdn2d_first_tap(uy0, p.up_y);
    const int tx0 = upfirdn2d_first_tap(ux0, p.up_x);
    ACC acc = ACC(0);
    int iy = (uy0 + ty0) / p.up_y;
    for (int ty = ty0; ty < p.k_h && iy < p.in_h; ty += p.up_y, ++iy) {
        const S* row = plane + (long long)iy * p.in_w;
        const ACC* krow = k + (long long)ty * p.k_w;
        int ix = (ux0 + tx0) / p.up_x;
        for (int tx = tx0; tx < p.k_w && ix < p.in_w; tx += p.up_x, ++ix) {
            acc += Convert<ACC, S>::load(row[ix]) * krow[tx];
        }
    }
    return acc;
}

// The same sum for a whole output row, taps outer and pixels inner, so the inner loop is a
// strided multiply-add a compiler vectorises (the CPU extension's loop order; one thread per
// pixel with upfirdn2d_pixel suits the GPU). Needs up_x == 1 or down_x == 1 (the other case has
// no single stride per tap). acc holds out_w values and is overwritten.
MSG_HD bool upfirdn2d_row_supported(const Upfirdn2dParams& p) { return p.up_x == 1 || p.down_x == 1; }

template <typename ACC, typename S>
MSG_HD void upfirdn2d_row(const S* plane, const ACC* k, const Upfirdn2dParams& p, int oy, ACC* acc) {
    for (int ox = 0; ox < p.out_w; ++ox) acc[ox] = ACC(0);
    const int uy0 = oy * p.down_y - p.pad_y0;
    const int ty0 = upfirdn2d_first_tap(uy0, p.up_y);
    int iy = (uy0 + ty0) / p.up_y;
    for (int ty = ty0; ty < p.k_h && iy < p.in_h; ty += p.up_y, ++iy) {
        const S* row = plane + (long long)iy * p.in_w;
        const ACC* krow = k + (long long)ty * p.k_w;
        for (int tx = 0; tx < p.k_w; ++tx) {
            // Output columns where tap tx lands on a real sample: ox0, ox0 + ostep, ...
            int ox0, ix0, ostep, istep;
            if (p.up_x == 1) {
                const int need = p.pad_x0 - tx;  // ix = ox * down_x - need >= 0
                ox0 = need > 0 ? (need + p.down_x - 1) / p.down_x : 0;
                ix0 = ox0 * p.down_x - need;
                ostep = 1;
                istep = p.down_x;
            } else {  // down_x == 1
                const int u0 = tx - p.pad_x0;
                ox0 = upfirdn2d_first_tap(u0, p.up_x);
                ix0 = (u0 + ox0) / p.up_x;
                ostep = p.up_x;
                istep = 1;
            }
            if (ox0 >= p.out_w || ix0 >= p.in_w) continue;
            const int by_out = (p.out_w - 1 - ox0) / ostep + 1;
            const int by_in = (p.in_w - 1 - ix0) / istep + 1;
            const int count = by_out < by_in ? by_out : by_in;
            const ACC kv = krow[tx];
            ACC* a = acc + ox0;
            const S* in = row + ix0;
            if (ostep == 1 && istep == 1) {
                MSG_SIMD
                for (int m = 0; m < count; ++m) a[m] += kv * Convert<ACC, S>::load(in[m]);
            } else if (ostep == 1) {
                MSG_SIMD
                for (int m = 0; m < count; ++m) a[m] += kv * Convert<ACC, S>::load(in[m * istep]);
            } else {
                MSG_SIMD
                for (int m = 0; m < count; ++m) a[m * ostep] += kv * Convert<ACC, S>::load(in[m]);
            }
        }
    }
}

// Channels-last order: all C channels of output pixel (oy, ox) of one image ([in_h, in_w, C] in
// memory), taps outer and channels inner, so the inner loop is contiguous and vectorises.
template <typename ACC, typename S>
MSG_HD void upfirdn2d_pixel_channels(const S* image, const ACC* k, const Upfirdn2dParams& p, int oy, int ox,
                                     ACC* acc) {
    const int C = p.channels;
    for (int c = 0; c < C; ++c) acc[c] = ACC(0);
    const int uy0 = oy * p.down_y - p.pad_y0;
    const int ux0 = ox * p.down_x - p.pad_x0;
    const int ty0 = upfirdn2d_first_tap(uy0, p.up_y);
    const int tx0 = upfirdn2d_first_tap(ux0, p.up_x);
    int iy = (uy0 + ty0) / p.up_y;
    for (int ty = ty0; ty < p.k_h && iy < p.in_h; ty += p.up_y, ++iy) {
        const ACC* krow = k + (long long)ty * p.k_w;
        int ix = (ux0 + tx0) / p.up_x;
        for (int tx = tx0; tx < p.k_w && ix < p.in_w; tx += p.up_x, ++ix) {
            const S* px = image + ((long long)iy * p.in_w + ix) * C;
            const ACC kv = krow[tx];
            MSG_SIMD
            for (int c = 0; c < C; ++c) acc[c] += kv * Convert<ACC, S>::load(px[c]);
        }
    }
}

}  // namespace medsemgan
