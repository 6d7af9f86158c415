// Philox4x32-10, the same generator and conventions as kernels/src/philox.rs
// (bit for bit): key = (seed lo, seed hi); counter = (stream lo, stream hi,
// draw block lo, draw block hi); u01 takes the top 23 bits plus half a step;
// normal_pair is Box-Muller in f32.
#pragma once

struct philox_u4 { unsigned int x, y, z, w; };

__device__ __forceinline__ philox_u4 philox_round(philox_u4 c, unsigned int k0, unsigned int k1) {
    const unsigned int hi0 = __umulhi(0xD2511F53u, c.x);
    const unsigned int lo0 = 0xD2511F53u * c.x;
    const unsigned int hi1 = __umulhi(0xCD9E8D57u, c.z);
    const unsigned int lo1 = 0xCD9E8D57u * c.z;
    philox_u4 r;
    r.x = hi1 ^ c.y ^ k0;
    r.y = lo1;
    r.z = hi0 ^ c.w ^ k1;
    r.w = lo0;
    return r;
}

__device__ __forceinline__ philox_u4 philox4x32_10(philox_u4 c, unsigned int k0, unsigned int k1) {
    c = philox_round(c, k0, k1);
#pragma unroll
    for (int i = 1; i < 10; ++i) {
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
        c = philox_round(c, k0, k1);
    }
    return c;
}

__device__ __forceinline__ philox_u4 philox_counter(unsigned long long stream, unsigned long long block) {
    philox_u4 c;
    c.x = (unsigned int)stream;
    c.y = (unsigned int)(stream >> 32);
    c.z = (unsigned int)block;
    c.w = (unsigned int)(block >> 32);
    return c;
}

__device__ __forceinline__ float philox_u01(unsigned int x) {
    return ((float)(x >> 9) + 0.5f) * (1.0f / 8388608.0f);
}

// Box-Muller; logf/sqrtf/sincospif are IEEE-accurate enough that the CPU twin
// (which uses the same formulas in f32) agrees within a few ulp.
__device__ __forceinline__ void philox_normal_pair(unsigned int a, unsigned int b, float* z0, float* z1) {
    const float u1 = philox_u01(a);
    const float u2 = philox_u01(b);
    const float r = sqrtf(-2.0f * logf(u1));
    float s, c;
    sincospif(2.0f * u2, &s, &c);
    *z0 = r * c;
    *z1 = r * s;
}
