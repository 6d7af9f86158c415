// A self-test of the toolchain and the generator: each thread writes the
// four words of Philox4x32-10 for (seed, stream = its index, block 0). The
// GPU tests compare them with kernels/src/philox.rs.
#include "philox.cuh"

extern "C" __global__ void philox_words(unsigned long long seed, unsigned int n, unsigned int* out) {
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) {
        return;
    }
    const philox_u4 r = philox4x32_10(philox_counter(i, 0), (unsigned int)seed, (unsigned int)(seed >> 32));
    out[4 * i + 0] = r.x;
    out[4 * i + 1] = r.y;
    out[4 * i + 2] = r.z;
    out[4 * i + 3] = r.w;
}
