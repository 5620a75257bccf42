// e^r · 2^n for a reduced argument |r| <= ln2/2: Cephes' expf minimax polynomial (relative error
// about 1 ulp) scaled by 2^n built in the exponent bits (n in [-127, 127]; n = -127 gives 0). The
// shared core of tile_ops.h's exp_approx and decode.cpp's exp2_poly, which differ only in how
// they reduce x to (n, r). Like tile_ops.h this is not a standalone header: it is included inside
// each translation unit's internal namespace, so every ISA build gets its own copy (an inline
// function with external linkage would let the linker mix AVX-512 and generic code).
__attribute__((always_inline)) inline float exp_reduced(float r, float n) {
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return y * scale;
}
