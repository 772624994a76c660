// jaxlm quantized matrix-vector / small-batch matmul for XLA:CPU, called through jax.ffi.
//
// out[m, n] = sum_k x[m, k] * W[k, n] for x float32 [M, K] and W stored per output row n in
// one of these formats (K is a multiple of 32; a "block" is 32 consecutive k of one row n):
//   q8_0: qs int8 [N, K],   d f16 [N, K/32]              W = d * q
//   q4_0: qs uint8 [N, K/2], d f16 [N, K/32]             W = d * (q - 8)
//   q4_1: qs uint8 [N, K/2], d f16 [N, K/32], m f16 [N, K/32]   W = d * q + m
//   i8:   qs int8 [N, K],   s f32 [N]   (per output channel)    W = s * q
// 4-bit blocks use GGUF's nibble order: byte j of a block holds element j in its low nibble
// and element j + 16 in its high nibble.
//
// Arithmetic (llama.cpp's q8_1 activation scheme, optionally at 16 bits; scales in float32):
//   1. each row of x is rounded in blocks of 32 to act_bits-bit integers, Q = 32767 (16, the
//      default) or 127 (8, llama.cpp's q8_1): amax = max|x|, dx = amax / Q (float32),
//      qx = clamp(rint(x * (1 / dx)), -Q, Q) (round half to even; qx = 0 when amax = 0),
//      sx = dx * (float)sum(qx);
//   2. per block the integer dot product isum = sum_j qw_j * qx_j is exact in int32 (for
//      q4_0, qw_j = q_j - 8). 8 bits: vpmaddubsw on the weight bytes (32 products per
//      instruction); 16 bits: the weight block widened to int16 and vpmaddwd (16 per
//      instruction), so the weight is still read once and the 16-bit path costs ~1 more
//      instruction per block;
//   3. out[m, n] = sum_b (dw_b * dx_b) * isum_b [+ sum_b mw_b * sx_b for q4_1], each scale
//      product in float32 and the sum accumulated in float32 (i8: dw_b = 1 and the row scale
//      s_n multiplies the sum at the end).
// The only differences from an exact evaluation of that formula are float32 accumulation
// order and, at batch 1, the conversion of a block's integer sum to float32 (exact below
// 2**24, which only 8-bit weights against 16-bit activations can exceed).
//
// AVX2/FMA/F16C code (and, for products with M >= 5, AVX-512 F/BW/VL/VNNI code: see RowsTile)
// is compiled with per-function target attributes and chosen at run time with
// __builtin_cpu_supports, so the library loads and runs (scalar path) on any x86-64 CPU.
// Rows n are split in chunks over a small persistent thread pool (caller thread included).

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kBlock = 32;

enum class Fmt { kQ8_0, kQ4_0, kQ4_1, kI8 };

// ---------------------------------------------------------------------------------------
// float16 -> float32 (portable; the AVX2 path uses F16C instead).
float HalfToFloat(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalize
      int e = -1;
      do {
        mant <<= 1;
        ++e;
      } while ((mant & 0x400u) == 0);
      mant &= 0x3ffu;
      bits = sign | ((uint32_t)(127 - 15 - e) << 23) | (mant << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// ---------------------------------------------------------------------------------------
// Activation quantization (shared by both paths; the scalar versions are the definition).
// Each row of x is rounded in blocks of 32 to int16 (act_bits = 16, the default: scale
// amax / 32767) or to int8 (act_bits = 8, llama.cpp's q8_1: scale amax / 127).
struct QuantX {
  int M = 0, K = 0, nb = 0;
  int bits = 16;
  std::vector<int8_t> q8;    // [M, K] (bits == 8)
  std::vector<int16_t> q16;  // [M, K] (bits == 16)
  std::vector<float> d;      // [M, nb] block scales
  std::vector<float> s;      // [M, nb] d * sum(q)
};

template <class Q, int QMAX>
void QuantizeBlockScalar(const float* x, Q* q, float* d_out, float* s_out) {
  float amax = 0.f;
  for (int j = 0; j < kBlock; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / (float)QMAX;
  const float id = d != 0.f ? 1.f / d : 0.f;
  int sum = 0;
  for (int j = 0; j < kBlock; ++j) {
    float v = std::nearbyint(x[j] * id);  // default rounding mode: half to even
    v = std::min((float)QMAX, std::max(-(float)QMAX, v));
    q[j] = (Q)v;
    sum += q[j];
  }
  *d_out = d;
  *s_out = d * (float)sum;  // |sum| <= 32 * 32767 < 2**24: exact in float32
}

// Sum of the 8 int32 lanes.
__attribute__((target("avx2,fma,f16c"))) inline int HSumI(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_extracti128_si256(v, 1), _mm256_castsi256_si128(v));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

// Rounds one block to int32 lanes qi[4] (values within +-QMAX); returns d and the int sum.
template <int QMAX>
__attribute__((target("avx2,fma,f16c"))) inline float RoundBlockAvx2(const float* x, __m256i* qi, int* sum) {
  const __m256 sign_mask = _mm256_set1_ps(-0.0f);
  __m256 v[4];
  __m256 amax = _mm256_setzero_ps();
  for (int i = 0; i < 4; ++i) {
    v[i] = _mm256_loadu_ps(x + 8 * i);
    amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign_mask, v[i]));
  }
  __m128 m4 = _mm_max_ps(_mm256_extractf128_ps(amax, 1), _mm256_castps256_ps128(amax));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  const float am = _mm_cvtss_f32(m4);
  const float d = am / (float)QMAX;
  const float id = d != 0.f ? 1.f / d : 0.f;
  const __m256 vid = _mm256_set1_ps(id);
  const __m256 lo = _mm256_set1_ps(-(float)QMAX), hi = _mm256_set1_ps((float)QMAX);
  for (int i = 0; i < 4; ++i) {
    __m256 r = _mm256_round_ps(_mm256_mul_ps(v[i], vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm256_min_ps(hi, _mm256_max_ps(lo, r));
    qi[i] = _mm256_cvtps_epi32(r);
  }
  *sum = HSumI(_mm256_add_epi32(_mm256_add_epi32(qi[0], qi[1]), _mm256_add_epi32(qi[2], qi[3])));
  return d;
}

__attribute__((target("avx2,fma,f16c"))) void QuantizeBlock8Avx2(const float* x, int8_t* q, float* d_out,
                                                                  float* s_out) {
  __m256i qi[4];
  int sum;
  const float d = RoundBlockAvx2<127>(x, qi, &sum);
  // pack int32 -> int8 in order (packs interleave 128-bit lanes: fix with a permute)
  __m256i p01 = _mm256_packs_epi32(qi[0], qi[1]);
  __m256i p23 = _mm256_packs_epi32(qi[2], qi[3]);
  __m256i p = _mm256_packs_epi16(p01, p23);
  p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  _mm256_storeu_si256((__m256i*)q, p);
  *d_out = d;
  *s_out = d * (float)sum;
}

__attribute__((target("avx2,fma,f16c"))) void QuantizeBlock16Avx2(const float* x, int16_t* q, float* d_out,
                                                                   float* s_out) {
  __m256i qi[4];
  int sum;
  const float d = RoundBlockAvx2<32767>(x, qi, &sum);
  // packs_epi32 interleaves 64-bit halves of the two inputs per lane: restore the order
  const __m256i p01 = _mm256_permute4x64_epi64(_mm256_packs_epi32(qi[0], qi[1]), 0xD8);
  const __m256i p23 = _mm256_permute4x64_epi64(_mm256_packs_epi32(qi[2], qi[3]), 0xD8);
  _mm256_storeu_si256((__m256i*)q, p01);
  _mm256_storeu_si256((__m256i*)(q + 16), p23);
  *d_out = d;
  *s_out = d * (float)sum;
}

void QuantizeX(const float* x, int M, int K, bool avx2, int bits, QuantX* out) {
  out->bits = bits;
  out->M = M;
  out->K = K;
  out->nb = K / kBlock;
  if (bits == 8) {
    out->q8.resize((size_t)M * K);
  } else {
    out->q16.resize((size_t)M * K);
  }
  out->d.resize((size_t)M * out->nb);
  out->s.resize((size_t)M * out->nb);
  for (int m = 0; m < M; ++m) {
    for (int b = 0; b < out->nb; ++b) {
      const size_t o = (size_t)m * K + (size_t)b * kBlock;
      const size_t ob = (size_t)m * out->nb + b;
      float* d = &out->d[ob];
      float* s = &out->s[ob];
      if (bits == 8) {
        if (avx2) QuantizeBlock8Avx2(x + o, out->q8.data() + o, d, s);
        else QuantizeBlockScalar<int8_t, 127>(x + o, out->q8.data() + o, d, s);
      } else {
        if (avx2) QuantizeBlock16Avx2(x + o, out->q16.data() + o, d, s);
        else QuantizeBlockScalar<int16_t, 32767>(x + o, out->q16.data() + o, d, s);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Weight views.
struct Weights {
  Fmt fmt;
  int N = 0, K = 0, nb = 0;
  const uint8_t* qs = nullptr;   // row stride: K (8-bit) or K/2 (4-bit) bytes
  const uint16_t* d = nullptr;   // f16 [N, nb] (q formats)
  const uint16_t* m = nullptr;   // f16 [N, nb] (q4_1)
  const float* s = nullptr;      // f32 [N] (i8)
  size_t row_bytes() const { return (fmt == Fmt::kQ8_0 || fmt == Fmt::kI8) ? K : K / 2; }
};

// Decode is bound by how fast rows stream from DRAM, not by the integer work (an L3-resident
// Q4_1 weight runs at ~1.5 ns per block per core, the model's 96.6 MB at ~3.3 from DRAM).
// Longer runs of rows per thread and a software prefetch 4 rows ahead (1-3 KB) stream better
// than 8 chunks per thread and a prefetch of the next row: batch-1 q4_1 decode +10% in
// session 10 (interleaved in one process: 2/4 vs 8/1, 10 rounds; 2/1 +7.5%, 2/8 +10%, 2/16 +8%).
// Both apply to M = 1; products with M > 1 are compute bound and keep 8 chunks per thread and a
// next-row prefetch.
constexpr int kChunksPerThread = 2;
constexpr int kPrefetchRows = 4;
constexpr int kChunksPerThreadBatched = 8;  // M > 1

// Scalar rows [n0, n1).
void RowsScalar(const Weights& w, const QuantX& xq, float* out, int n0, int n1) {
  const int nb = w.nb, M = xq.M;
  int32_t qw[kBlock];
  for (int n = n0; n < n1; ++n) {
    const uint8_t* row = w.qs + (size_t)n * w.row_bytes();
    for (int mi = 0; mi < M; ++mi) {
      float acc = 0.f;
      for (int b = 0; b < nb; ++b) {
        switch (w.fmt) {
          case Fmt::kQ8_0:
          case Fmt::kI8:
            for (int j = 0; j < kBlock; ++j) qw[j] = (int8_t)row[b * kBlock + j];
            break;
          case Fmt::kQ4_0:
          case Fmt::kQ4_1: {
            const int off = w.fmt == Fmt::kQ4_0 ? 8 : 0;
            const uint8_t* p = row + b * (kBlock / 2);
            for (int j = 0; j < kBlock / 2; ++j) {
              qw[j] = (p[j] & 0x0f) - off;
              qw[j + 16] = (p[j] >> 4) - off;
            }
            break;
          }
        }
        const size_t xo = (size_t)mi * xq.K + (size_t)b * kBlock;
        int32_t isum = 0;
        if (xq.bits == 8) {
          for (int j = 0; j < kBlock; ++j) isum += qw[j] * (int32_t)xq.q8[xo + j];
        } else {
          for (int j = 0; j < kBlock; ++j) isum += qw[j] * (int32_t)xq.q16[xo + j];
        }
        const float dx = xq.d[(size_t)mi * nb + b];
        const float dw = w.fmt == Fmt::kI8 ? 1.f : HalfToFloat(w.d[(size_t)n * nb + b]);
        acc += (dw * dx) * (float)isum;
        if (w.fmt == Fmt::kQ4_1) acc += HalfToFloat(w.m[(size_t)n * nb + b]) * xq.s[(size_t)mi * nb + b];
      }
      if (w.fmt == Fmt::kI8) acc *= w.s[n];
      out[(size_t)mi * w.N + n] = acc;
    }
  }
}

// AVX2 helpers ---------------------------------------------------------------------------
__attribute__((target("avx2,fma,f16c"))) inline __m256i Unpack4(const uint8_t* p) {
  const __m128i t = _mm_loadu_si128((const __m128i*)p);
  const __m256i both = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
}

// 8 int32 partial sums of sum_j a_j * b_j for signed int8 a, b (|a| <= 128, |b| <= 127).
__attribute__((target("avx2,fma,f16c"))) inline __m256i DotS8(__m256i a, __m256i b) {
  const __m256i ua = _mm256_sign_epi8(a, a);
  const __m256i sb = _mm256_sign_epi8(b, a);
  const __m256i p16 = _mm256_maddubs_epi16(ua, sb);
  return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}

// Same for unsigned a in [0, 15].
__attribute__((target("avx2,fma,f16c"))) inline __m256i DotU4S8(__m256i a, __m256i b) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1));
}

__attribute__((target("avx2,fma,f16c"))) inline float HSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}


// f16 [n] -> f32 [n] (8 at a time with F16C).
__attribute__((target("avx2,fma,f16c"))) inline void HalfRowToFloat(const uint16_t* h, int n, float* f) {
  int b = 0;
  for (; b + 8 <= n; b += 8) _mm256_storeu_ps(f + b, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(h + b))));
  for (; b < n; ++b) f[b] = _cvtsh_ss(h[b]);
}

// sum_b a[b] * c[b] in float32 (products fused, 8 lanes then a horizontal sum).
__attribute__((target("avx2,fma,f16c"))) inline float DotF32(const float* a, const float* c, int n) {
  __m256 acc = _mm256_setzero_ps();
  int b = 0;
  for (; b + 8 <= n; b += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + b), _mm256_loadu_ps(c + b), acc);
  float r = HSum(acc);
  for (; b < n; ++b) r += a[b] * c[b];
  return r;
}

// One weight block, ready for the dot product with one activation block: 32 int8 values for
// 8-bit activations (4-bit formats unsigned for q4_1), or two registers of 16 int16 values
// (elements 0-15 and 16-31) for 16-bit activations.
struct WBlock {
  __m256i a, b;
};

template <Fmt F, int B>
__attribute__((target("avx2,fma,f16c"))) inline WBlock LoadW(const uint8_t* row, int blk) {
  WBlock w;
  if constexpr (B == 8) {
    if constexpr (F == Fmt::kQ8_0 || F == Fmt::kI8) {
      w.a = _mm256_loadu_si256((const __m256i*)(row + (size_t)blk * kBlock));
    } else {
      w.a = Unpack4(row + (size_t)blk * (kBlock / 2));
      if constexpr (F == Fmt::kQ4_0) w.a = _mm256_sub_epi8(w.a, _mm256_set1_epi8(8));
    }
  } else if constexpr (F == Fmt::kQ8_0 || F == Fmt::kI8) {
    const uint8_t* p = row + (size_t)blk * kBlock;
    w.a = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)p));
    w.b = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(p + 16)));
  } else {
    // byte j holds element j (low nibble) and j + 16 (high nibble): widen the bytes to 16
    // bits, then the low nibbles are elements 0-15 and the bytes shifted right by 4 16-31
    const __m256i v = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(row + (size_t)blk * (kBlock / 2))));
    w.a = _mm256_and_si256(v, _mm256_set1_epi16(0x0f));
    w.b = _mm256_srli_epi16(v, 4);
    if constexpr (F == Fmt::kQ4_0) {
      w.a = _mm256_sub_epi16(w.a, _mm256_set1_epi16(8));
      w.b = _mm256_sub_epi16(w.b, _mm256_set1_epi16(8));
    }
  }
  return w;
}

// 8 int32 partial sums of one weight block against one activation block (exact: 8-bit
// |sum| <= 32 * 128 * 127; 16-bit |sum| <= 32 * 128 * 32767 < 2**28).
template <Fmt F, int B>
__attribute__((target("avx2,fma,f16c"))) inline __m256i BlockDot(const WBlock& w, const void* qx) {
  if constexpr (B == 8) {
    const __m256i x = _mm256_loadu_si256((const __m256i*)qx);
    if constexpr (F == Fmt::kQ4_1) {
      return DotU4S8(w.a, x);
    } else {
      return DotS8(w.a, x);
    }
  } else {
    const __m256i* x = (const __m256i*)qx;
    return _mm256_add_epi32(_mm256_madd_epi16(w.a, _mm256_loadu_si256(x)),
                            _mm256_madd_epi16(w.b, _mm256_loadu_si256(x + 1)));
  }
}

template <int B>
inline const void* XBlock(const QuantX& xq, size_t offset) {
  if constexpr (B == 8) {
    return xq.q8.data() + offset;
  } else {
    return xq.q16.data() + offset;
  }
}

// G rows of x against one weight row n, accumulators in registers (G is a constant).
template <Fmt F, int G, int B>
__attribute__((target("avx2,fma,f16c"))) inline void RowGroup(const Weights& w, const QuantX& xq,
                                                             const uint8_t* row, int n,
                                                             const float* dwf, const float* mwf,
                                                             int m0, float* out) {
  const int nb = w.nb;
  __m256 acc[G];
  for (int g = 0; g < G; ++g) acc[g] = _mm256_setzero_ps();
  const float* dx0 = xq.d.data() + (size_t)m0 * nb;
  for (int b = 0; b < nb; ++b) {
    const WBlock qw = LoadW<F, B>(row, b);
    const float dw = F == Fmt::kI8 ? 1.f : dwf[b];
    for (int g = 0; g < G; ++g) {
      const size_t xo = (size_t)(m0 + g) * xq.K + (size_t)b * kBlock;
      const __m256i d32 = BlockDot<F, B>(qw, XBlock<B>(xq, xo));
      const float scv = dw * dx0[(size_t)g * nb + b];
      acc[g] = _mm256_fmadd_ps(_mm256_set1_ps(scv), _mm256_cvtepi32_ps(d32), acc[g]);
    }
  }
  for (int g = 0; g < G; ++g) {
    const int mi = m0 + g;
    float r = HSum(acc[g]);
    if constexpr (F == Fmt::kQ4_1) r += DotF32(mwf, xq.s.data() + (size_t)mi * nb, nb);
    if constexpr (F == Fmt::kI8) r *= w.s[n];
    out[(size_t)mi * w.N + n] = r;
  }
}

// The 8 int32 lane vectors of 8 blocks -> one vector of the 8 block sums, in block order.
__attribute__((target("avx2,fma,f16c"))) inline __m256i Reduce8(const __m256i* v) {
  const __m256i h0123 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
  const __m256i h4567 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
  // each 128-bit lane of h0123 holds that lane's partial sums of blocks 0-3
  return _mm256_add_epi32(_mm256_permute2x128_si256(h0123, h4567, 0x20),
                          _mm256_permute2x128_si256(h0123, h4567, 0x31));
}

// One output of a single activation row (decode). Blocks go 8 at a time: their integer sums
// are reduced to one vector of 8 block sums, which meets the 8 scale products dw_b * dx_b
// (and the q4_1 mins against sx_b) in one FMA each, instead of a convert, a broadcast and an
// FMA per block; the blocks past the last multiple of 8 go one at a time.
template <Fmt F, int B>
__attribute__((target("avx2,fma,f16c"))) inline float RowDecode(const Weights& w, const QuantX& xq,
                                                               const uint8_t* row, int n) {
  const int nb = w.nb;
  const uint16_t* dw = F == Fmt::kI8 ? nullptr : w.d + (size_t)n * nb;
  const uint16_t* mw = F == Fmt::kQ4_1 ? w.m + (size_t)n * nb : nullptr;
  __m256 acc = _mm256_setzero_ps();
  int b = 0;
  for (; b + 8 <= nb; b += 8) {
    __m256i v[8];
    for (int i = 0; i < 8; ++i)
      v[i] = BlockDot<F, B>(LoadW<F, B>(row, b + i), XBlock<B>(xq, (size_t)(b + i) * kBlock));
    const __m256 isum = _mm256_cvtepi32_ps(Reduce8(v));
    __m256 sc = _mm256_loadu_ps(xq.d.data() + b);
    if constexpr (F != Fmt::kI8) sc = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(dw + b))), sc);
    acc = _mm256_fmadd_ps(sc, isum, acc);
    if constexpr (F == Fmt::kQ4_1)
      acc = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(mw + b))),
                            _mm256_loadu_ps(xq.s.data() + b), acc);
  }
  float r = HSum(acc);
  for (; b < nb; ++b) {
    const int isum = HSumI(BlockDot<F, B>(LoadW<F, B>(row, b), XBlock<B>(xq, (size_t)b * kBlock)));
    const float dwb = F == Fmt::kI8 ? 1.f : _cvtsh_ss(dw[b]);
    r += (dwb * xq.d[b]) * (float)isum;
    if constexpr (F == Fmt::kQ4_1) r += _cvtsh_ss(mw[b]) * xq.s[b];
  }
  if constexpr (F == Fmt::kI8) r *= w.s[n];
  return r;
}

template <Fmt F, int B>
__attribute__((target("avx2,fma,f16c"))) void RowsAvx2(const Weights& w, const QuantX& xq,
                                                       float* out, int n0, int n1) {
  const int nb = w.nb, M = xq.M;
  const size_t rb = w.row_bytes();
  thread_local std::vector<float> buf;
  buf.resize((size_t)2 * nb);
  float* dwf = buf.data();       // this row's block scales (f32)
  float* mwf = dwf + nb;         // this row's block mins (q4_1)
  for (int n = n0; n < n1; ++n) {
    const uint8_t* row = w.qs + (size_t)n * rb;
    const int pf = M == 1 ? kPrefetchRows : 1;
    if (n + pf < n1) {
      // a row pf ahead streams from memory while this one is computed
      const char* nx = (const char*)(row + (size_t)pf * rb);
      for (size_t o = 0; o < rb; o += 64) _mm_prefetch(nx + o, _MM_HINT_T0);
    }
    if (M == 1) {
      out[n] = RowDecode<F, B>(w, xq, row, n);
      continue;
    }
    if constexpr (F != Fmt::kI8) HalfRowToFloat(w.d + (size_t)n * nb, nb, dwf);
    if constexpr (F == Fmt::kQ4_1) HalfRowToFloat(w.m + (size_t)n * nb, nb, mwf);
    int m0 = 0;
    for (; m0 + 4 <= M; m0 += 4) RowGroup<F, 4, B>(w, xq, row, n, dwf, mwf, m0, out);
    switch (M - m0) {  // the last 1-3 rows of x in one pass over the weight row
      case 3: RowGroup<F, 3, B>(w, xq, row, n, dwf, mwf, m0, out); break;
      case 2: RowGroup<F, 2, B>(w, xq, row, n, dwf, mwf, m0, out); break;
      case 1: RowGroup<F, 1, B>(w, xq, row, n, dwf, mwf, m0, out); break;
      default: break;
    }
  }
}

// ---------------------------------------------------------------------------------------
// Batched products (M >= 5) on AVX-512 VNNI: tokens in the vector lanes.
//
// The AVX2 path above computes each (row, token, block) dot product inside one register and
// then reduces it horizontally: ~8 instructions per block and token. Here the activations of
// up to 16 tokens are transposed so that lane t of a 512-bit register holds token t
// (XTile): for each block b and pair k = 0..15 one int32 lane packs (qx_t[2k], qx_t[2k+1]) as
// int16. The weight block of a row is widened to 32 int16 once (a 64-byte scratch row, shared
// by every token), and one vpdpwssd of the token register against the weight pair broadcast
// from that scratch adds sum_j qw_j * qx_tj over a pair to all 16 tokens at once: 16 such
// instructions make the 16 block sums isum_tb, already one per lane, so they meet the scale
// products dw_b * dx_tb in one convert and one FMA with no horizontal reduction. 8 rows share
// each token register load. The integer sums are the same exact int32 values as in the other
// paths; the float32 accumulation is per block in block order (as RowGroup).
constexpr int kTileRows = 8;  // weight rows per register pass

// The tile serves M >= kTileMinRows: 16 lanes (zmm) above 8 rows of x, 8 (ymm) for 5-8, so a
// small batch does not pay for 16 lanes. With 2-4 rows even a 4-lane tile lost to the AVX2 row
// path, which widens each weight block once for all rows in registers (SmolLM2 q4_1 decode at
// batch 2, session 11: 30 vs 22 ms per step).
constexpr int kTileMinRows = 5;
inline int TileLanes(int M) { return M > 8 ? 16 : 8; }

struct XTile {
  int M = 0, V = 16, groups = 0;  // V lanes per register, groups = ceil(M / V)
  std::vector<int32_t> q;                // [groups, nb, 16 pairs, V] packed int16 pairs
  std::vector<float> d, s;               // [groups, nb, V] (0 for padding tokens)
};

void BuildXTile(const QuantX& xq, XTile* t) {
  const int V = TileLanes(xq.M);
  t->M = xq.M;
  t->V = V;
  t->groups = (xq.M + V - 1) / V;
  t->q.assign((size_t)t->groups * xq.nb * 16 * V, 0);
  t->d.assign((size_t)t->groups * xq.nb * V, 0.f);
  t->s.assign((size_t)t->groups * xq.nb * V, 0.f);
  for (int m = 0; m < xq.M; ++m) {
    const int g = m / V, lane = m % V;
    for (int b = 0; b < xq.nb; ++b) {
      const size_t base = ((size_t)g * xq.nb + b);
      const size_t xo = (size_t)m * xq.K + (size_t)b * kBlock;
      int32_t* dst = t->q.data() + base * 16 * V + lane;
      for (int k = 0; k < 16; ++k) {
        const int lo = xq.bits == 8 ? xq.q8[xo + 2 * k] : xq.q16[xo + 2 * k];
        const int hi = xq.bits == 8 ? xq.q8[xo + 2 * k + 1] : xq.q16[xo + 2 * k + 1];
        dst[k * V] = (int32_t)(((uint32_t)(uint16_t)(int16_t)lo) | ((uint32_t)(uint16_t)(int16_t)hi << 16));
      }
      t->d[base * V + lane] = xq.d[(size_t)m * xq.nb + b];
      t->s[base * V + lane] = xq.s[(size_t)m * xq.nb + b];
    }
  }
}

#define JAXLM_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

// The few vector operations of the tile, per lane count.
template <int V>
struct Lanes;
template <>
struct Lanes<16> {
  using I = __m512i;
  using F = __m512;
  JAXLM_AVX512 static I Zero() { return _mm512_setzero_si512(); }
  JAXLM_AVX512 static F ZeroF() { return _mm512_setzero_ps(); }
  JAXLM_AVX512 static I Load(const int32_t* p) { return _mm512_loadu_si512((const void*)p); }
  JAXLM_AVX512 static I Dp(I acc, I x, int32_t w) { return _mm512_dpwssd_epi32(acc, x, _mm512_set1_epi32(w)); }
  JAXLM_AVX512 static F LoadF(const float* p) { return _mm512_loadu_ps(p); }
  JAXLM_AVX512 static F Set1(float v) { return _mm512_set1_ps(v); }
  JAXLM_AVX512 static F Cvt(I v) { return _mm512_cvtepi32_ps(v); }
  JAXLM_AVX512 static F Mul(F a, F b) { return _mm512_mul_ps(a, b); }
  JAXLM_AVX512 static F Fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  JAXLM_AVX512 static void Store(float* p, F v) { _mm512_storeu_ps(p, v); }
};
template <>
struct Lanes<8> {
  using I = __m256i;
  using F = __m256;
  JAXLM_AVX512 static I Zero() { return _mm256_setzero_si256(); }
  JAXLM_AVX512 static F ZeroF() { return _mm256_setzero_ps(); }
  JAXLM_AVX512 static I Load(const int32_t* p) { return _mm256_loadu_si256((const __m256i*)p); }
  JAXLM_AVX512 static I Dp(I acc, I x, int32_t w) { return _mm256_dpwssd_epi32(acc, x, _mm256_set1_epi32(w)); }
  JAXLM_AVX512 static F LoadF(const float* p) { return _mm256_loadu_ps(p); }
  JAXLM_AVX512 static F Set1(float v) { return _mm256_set1_ps(v); }
  JAXLM_AVX512 static F Cvt(I v) { return _mm256_cvtepi32_ps(v); }
  JAXLM_AVX512 static F Mul(F a, F b) { return _mm256_mul_ps(a, b); }
  JAXLM_AVX512 static F Fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  JAXLM_AVX512 static void Store(float* p, F v) { _mm256_storeu_ps(p, v); }
};

// One row's weights widened to int16 in element order (LoadW's 16-bit blocks), block b at
// q + b * stride (32 values, so int32 k of a block is the pair (2k, 2k + 1)), and its block
// scales / mins in float32.
template <Fmt F>
JAXLM_AVX512 inline void WidenRow(const Weights& w, int n, int16_t* q, size_t stride, float* dwf, float* mwf) {
  const int nb = w.nb;
  const uint8_t* row = w.qs + (size_t)n * w.row_bytes();
  for (int b = 0; b < nb; ++b) {
    const WBlock wb = LoadW<F, 16>(row, b);
    _mm256_storeu_si256((__m256i*)(q + (size_t)b * stride), wb.a);
    _mm256_storeu_si256((__m256i*)(q + (size_t)b * stride + 16), wb.b);
  }
  if constexpr (F != Fmt::kI8) HalfRowToFloat(w.d + (size_t)n * nb, nb, dwf);
  if constexpr (F == Fmt::kQ4_1) HalfRowToFloat(w.m + (size_t)n * nb, nb, mwf);
}

// R rows (widened in wq [nb, R, 32]: a block's R rows side by side, so every broadcast below
// is a constant offset from one pointer; scales dwf/mwf [R, nb]) against token group g.
template <Fmt F, int R, int V>
JAXLM_AVX512 inline void TileRows(const Weights& w, const XTile& xt, int g, const int16_t* wq,
                                  const float* dwf, const float* mwf, int n0, float* out) {
  using L = Lanes<V>;
  const int nb = w.nb;
  typename L::F acc[R];
  for (int r = 0; r < R; ++r) acc[r] = L::ZeroF();
  const int32_t* xg = xt.q.data() + (size_t)g * nb * 16 * V;
  const float* dg = xt.d.data() + (size_t)g * nb * V;
  const float* sg = xt.s.data() + (size_t)g * nb * V;
  for (int b = 0; b < nb; ++b) {
    typename L::I is[R];
    for (int r = 0; r < R; ++r) is[r] = L::Zero();
    const int32_t* xb = xg + (size_t)b * 16 * V;
    const int32_t* wb = (const int32_t*)(wq + (size_t)b * R * kBlock);  // [R, 16 pairs]
#pragma GCC unroll 16
    for (int k = 0; k < 16; ++k) {
      const typename L::I xv = L::Load(xb + k * V);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) is[r] = L::Dp(is[r], xv, wb[r * 16 + k]);
    }
    const typename L::F dx = L::LoadF(dg + (size_t)b * V);
    for (int r = 0; r < R; ++r) {
      const typename L::F sc = F == Fmt::kI8 ? dx : L::Mul(L::Set1(dwf[(size_t)r * nb + b]), dx);
      acc[r] = L::Fma(L::Cvt(is[r]), sc, acc[r]);
      if constexpr (F == Fmt::kQ4_1)
        acc[r] = L::Fma(L::Set1(mwf[(size_t)r * nb + b]), L::LoadF(sg + (size_t)b * V), acc[r]);
    }
  }
  alignas(64) float res[V];
  const int m_end = std::min(V, xt.M - g * V);
  for (int r = 0; r < R; ++r) {
    typename L::F v = acc[r];
    if constexpr (F == Fmt::kI8) v = L::Mul(v, L::Set1(w.s[n0 + r]));
    L::Store(res, v);
    for (int t = 0; t < m_end; ++t) out[(size_t)(g * V + t) * w.N + n0 + r] = res[t];
  }
}

// The row passes of one lane count over rows [n0, n1).
template <Fmt F, int V>
JAXLM_AVX512 void RowsTileV(const Weights& w, const XTile& xt, float* out, int n0, int n1, int16_t* wq,
                            float* dwf, float* mwf) {
  const int nb = w.nb;
  int n = n0;
  for (; n + kTileRows <= n1; n += kTileRows) {
    for (int r = 0; r < kTileRows; ++r)
      WidenRow<F>(w, n + r, wq + (size_t)r * kBlock, (size_t)kTileRows * kBlock, dwf + (size_t)r * nb,
                  mwf + (size_t)r * nb);
    for (int g = 0; g < xt.groups; ++g) TileRows<F, kTileRows, V>(w, xt, g, wq, dwf, mwf, n, out);
  }
  for (; n < n1; ++n) {
    WidenRow<F>(w, n, wq, kBlock, dwf, mwf);
    for (int g = 0; g < xt.groups; ++g) TileRows<F, 1, V>(w, xt, g, wq, dwf, mwf, n, out);
  }
}

template <Fmt F>
JAXLM_AVX512 void RowsTile(const Weights& w, const XTile& xt, float* out, int n0, int n1) {
  const int nb = w.nb;
  thread_local std::vector<int16_t> wq;
  thread_local std::vector<float> sc;
  wq.resize((size_t)kTileRows * nb * kBlock);
  sc.resize((size_t)2 * kTileRows * nb);
  float* dwf = sc.data();
  float* mwf = dwf + (size_t)kTileRows * nb;
  switch (xt.V) {
    case 8: return RowsTileV<F, 8>(w, xt, out, n0, n1, wq.data(), dwf, mwf);
    default: return RowsTileV<F, 16>(w, xt, out, n0, n1, wq.data(), dwf, mwf);
  }
}

void RowsTileFmt(const Weights& w, const XTile& xt, float* out, int n0, int n1) {
  switch (w.fmt) {
    case Fmt::kQ8_0: return RowsTile<Fmt::kQ8_0>(w, xt, out, n0, n1);
    case Fmt::kQ4_0: return RowsTile<Fmt::kQ4_0>(w, xt, out, n0, n1);
    case Fmt::kQ4_1: return RowsTile<Fmt::kQ4_1>(w, xt, out, n0, n1);
    case Fmt::kI8: return RowsTile<Fmt::kI8>(w, xt, out, n0, n1);
  }
}

template <int B>
void RowsAvx2Bits(const Weights& w, const QuantX& xq, float* out, int n0, int n1) {
  switch (w.fmt) {
    case Fmt::kQ8_0: return RowsAvx2<Fmt::kQ8_0, B>(w, xq, out, n0, n1);
    case Fmt::kQ4_0: return RowsAvx2<Fmt::kQ4_0, B>(w, xq, out, n0, n1);
    case Fmt::kQ4_1: return RowsAvx2<Fmt::kQ4_1, B>(w, xq, out, n0, n1);
    case Fmt::kI8: return RowsAvx2<Fmt::kI8, B>(w, xq, out, n0, n1);
  }
}

// Rows [n0, n1) of one weight: the tile path when xt is set (AVX-512, M >= 5), else AVX2 or scalar.
void Rows(const Weights& w, const QuantX& xq, const XTile* xt, float* out, int n0, int n1, bool avx2) {
  if (xt != nullptr) return RowsTileFmt(w, *xt, out, n0, n1);
  if (!avx2) return RowsScalar(w, xq, out, n0, n1);
  if (xq.bits == 8) return RowsAvx2Bits<8>(w, xq, out, n0, n1);
  return RowsAvx2Bits<16>(w, xq, out, n0, n1);
}

// ---------------------------------------------------------------------------------------
// Capability: 0 = scalar, 1 = AVX2+FMA+F16C, 2 = that plus AVX-512 F/BW/VL/VNNI (used by products
// with M >= 5; batch-1 decode streams rows and keeps the AVX2 code). JAXLM_KERNEL_ISA=scalar|avx2|
// avx512 caps the level (a level the CPU lacks is never used); JAXLM_KERNEL_SCALAR=1 is the same
// as JAXLM_KERNEL_ISA=scalar.
int DetectIsa() {
  int cap = 2;
  const char* force = std::getenv("JAXLM_KERNEL_SCALAR");
  if (force != nullptr && force[0] != '\0' && force[0] != '0') cap = 0;
  const char* want = std::getenv("JAXLM_KERNEL_ISA");
  if (want != nullptr) {
    const std::string v(want);
    if (v == "scalar") cap = 0;
    else if (v == "avx2") cap = std::min(cap, 1);
  }
  __builtin_cpu_init();
  int isa = 0;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
    isa = 1;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
      isa = 2;
  }
  return std::min(isa, cap);
}

int Isa() {
  static const int isa = DetectIsa();
  return isa;
}

// ---------------------------------------------------------------------------------------
// A small persistent pool, built for decode: ~200 short calls per token on a machine that
// may be shared. Run(job) publishes the job in one 64-bit ticket word
// (job id << 32 | n_chunks << 16 | next chunk); the caller and the workers claim chunks with a
// compare-and-swap on that word, so a worker that wakes late finds the job id changed or no
// chunk left and touches nothing: the caller never waits for a worker that holds no chunk,
// only for chunks actually claimed (counted in done_). A claimed chunk pins the job, so its
// parameters stay valid while the chunk runs. Workers spin briefly on the ticket, then
// sleep on a condition variable; the caller takes the mutex and notifies only when a worker
// sleeps (sleepers_ > 0), so back-to-back calls cost no system call. While it waits for
// claimed chunks the caller spins, then yields its core (a descheduled worker gets it).
// Every spin limit is a time read from the steady clock, not a count of pause instructions:
// a pause lasts ~140 cycles on Skylake-class Intel cores and several times fewer on other
// cores, so the counts tuned on one host (2,000 pauses) made the caller on an AMD EPYC host treat
// ordinary waits for a ~100-us chunk as straggling and fall back to one thread (2 threads
// measured no faster than 1 there; with the clock, batch-1 q4_1 decode went 91 -> 106 tok/s).
struct Job {
  void (*fn)(const void* ctx, int chunk);
  const void* ctx;
};

class Pool {
 public:
  explicit Pool(int n_workers) {
    for (int i = 0; i < n_workers; ++i) workers_.emplace_back([this] { Loop(); });
  }
  ~Pool() {
    stop_.store(true);
    ticket_.fetch_add(uint64_t{1} << 32);  // a new job id wakes the spinners
    {
      std::lock_guard<std::mutex> lk(mu_);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  int size() const { return (int)workers_.size(); }

  // Runs job.fn(ctx, c) for c in [0, n_chunks) on the caller and the workers; returns when all
  // chunks are done. n_chunks < 65536. Returns true when the caller had to wait long for a
  // claimed chunk (a worker descheduled mid-chunk: the machine is oversubscribed).
  bool Run(const Job& job, int n_chunks) {
    job_ = job;
    done_.store(0, std::memory_order_relaxed);
    const uint64_t id = (ticket_.load(std::memory_order_relaxed) >> 32) + 1;
    ticket_.store((id << 32) | ((uint64_t)n_chunks << 16), std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      { std::lock_guard<std::mutex> lk(mu_); }
      cv_.notify_all();
    }
    Work(id);
    if (done_.load(std::memory_order_acquire) == n_chunks) return false;
    const auto t0 = Clock::now();
    bool yielding = false;
    for (int spin = 0; done_.load(std::memory_order_acquire) != n_chunks; ++spin) {
      if (!yielding) {
        _mm_pause();
        if ((spin & 63) == 0 && Clock::now() - t0 > kCallerSpin) yielding = true;
      } else {
        std::this_thread::yield();
      }
    }
    // a wait past a scheduler time slice: a worker was descheduled mid-chunk
    return Clock::now() - t0 > kStraggle;
  }

 private:
  using Clock = std::chrono::steady_clock;
  static constexpr auto kSpin = std::chrono::microseconds(1000);       // worker: spin, then sleep
  static constexpr auto kCallerSpin = std::chrono::microseconds(200);  // caller: spin, then yield
  static constexpr auto kStraggle = std::chrono::microseconds(2000);   // caller: waited too long

  // Claims and runs chunks of job `id` until none are left (or the job changed).
  void Work(uint64_t id) {
    uint64_t t = ticket_.load(std::memory_order_acquire);
    for (;;) {
      if ((t >> 32) != id) return;
      const uint64_t n = (t >> 16) & 0xffffu, c = t & 0xffffu;
      if (c >= n) return;
      if (!ticket_.compare_exchange_weak(t, t + 1, std::memory_order_acq_rel, std::memory_order_acquire))
        continue;  // t now holds the current word
      const Job job = job_;  // stable: chunk c of job id is claimed and not yet done
      job.fn(job.ctx, (int)c);
      done_.fetch_add(1, std::memory_order_release);
      t = ticket_.load(std::memory_order_acquire);
    }
  }

  void Loop() {
    uint64_t seen = ticket_.load() >> 32;
    for (;;) {
      uint64_t id;
      auto t0 = Clock::now();
      for (int spin = 0; (id = ticket_.load(std::memory_order_acquire) >> 32) == seen; ++spin) {
        if ((spin & 255) != 0 || Clock::now() - t0 < kSpin) {
          _mm_pause();
          continue;
        }
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        {
          std::unique_lock<std::mutex> lk(mu_);
          cv_.wait(lk, [&] { return (ticket_.load(std::memory_order_seq_cst) >> 32) != seen; });
        }
        sleepers_.fetch_sub(1, std::memory_order_relaxed);
        spin = 0;
        t0 = Clock::now();
      }
      if (stop_.load()) return;
      seen = id;
      Work(id);
    }
  }

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<uint64_t> ticket_{0};
  std::atomic<int> done_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  Job job_{nullptr, nullptr};
};

// After a straggling call (see Pool::Run) the next kSoloCalls calls run on the caller alone:
// on an oversubscribed machine a descheduled worker costs a scheduler time slice per call,
// far more than the second core gains. Then the pool is tried again.
constexpr int kSoloCalls = 512;
std::atomic<int> g_solo_calls{0};

std::mutex g_pool_mu;  // one multithreaded call at a time; concurrent calls run single-threaded
Pool* g_pool = nullptr;

int DefaultThreads() {
  const char* env = std::getenv("JAXLM_KERNEL_THREADS");
  if (env != nullptr && std::atoi(env) > 0) return std::atoi(env);
  const unsigned hw = std::thread::hardware_concurrency();
  return hw > 0 ? (int)hw : 1;
}

// out[i] = x @ ws[i] for n weights of one format sharing K: x is quantized once and the rows
// of all weights are split into chunks for one pool dispatch (q/k/v or gate/up of a layer in
// one call: decode pays the dispatch, the quantization and the wake-up once instead of 2-3x).
void ComputeMany(const Weights* ws, float* const* outs, int n, const float* x, int M, int threads,
                 int act_bits) {
  const bool avx2 = Isa() >= 1;
  thread_local QuantX scratch;  // reused: no allocation per call once warm
  QuantX& xq = scratch;  // a plain reference, so the pool's lambda reads this thread's copy
  QuantizeX(x, M, ws[0].K, avx2, act_bits, &xq);
  thread_local XTile tile_scratch;
  const XTile* xt = nullptr;
  if (M >= kTileMinRows && Isa() >= 2) {
    BuildXTile(xq, &tile_scratch);
    xt = &tile_scratch;
  }
  if (threads <= 0) threads = DefaultThreads();
  int n_total = 0;
  for (int i = 0; i < n; ++i) n_total += ws[i].N;
  // chunks of rows: at decode (M = 1) two per thread, so each thread streams long runs of
  // rows and uneven progress still balances out; for M > 1 (compute bound) eight per
  // thread; a chunk never spans two weights
  int chunk = std::max(8, n_total / (threads * (M == 1 ? kChunksPerThread : kChunksPerThreadBatched)));
  if (xt != nullptr) chunk = (chunk + kTileRows - 1) / kTileRows * kTileRows;  // whole row passes
  struct Span {
    int w, n0, n1;
  };
  thread_local std::vector<Span> spans;
  spans.clear();
  for (int i = 0; i < n; ++i)
    for (int n0 = 0; n0 < ws[i].N; n0 += chunk) spans.push_back({i, n0, std::min(ws[i].N, n0 + chunk)});
  const int n_chunks = (int)spans.size();
  threads = std::min(threads, n_chunks);
  std::unique_lock<std::mutex> lk(g_pool_mu, std::defer_lock);
  bool solo = threads <= 1;
  if (!solo && g_solo_calls.load(std::memory_order_relaxed) > 0) {
    g_solo_calls.fetch_sub(1, std::memory_order_relaxed);
    solo = true;
  }
  if (solo || !lk.try_lock()) {
    for (int i = 0; i < n; ++i) Rows(ws[i], xq, xt, outs[i], 0, ws[i].N, avx2);
    return;
  }
  if (g_pool == nullptr || g_pool->size() != threads - 1) {
    delete g_pool;
    g_pool = new Pool(threads - 1);
  }
  struct Ctx {
    const Weights* ws;
    float* const* outs;
    const Span* spans;
    const QuantX* xq;
    const XTile* xt;
    bool avx2;
  } ctx{ws, outs, spans.data(), &xq, xt, avx2};
  const Job job{[](const void* p, int c) {
                  const Ctx& k = *static_cast<const Ctx*>(p);
                  const Span& sp = k.spans[c];
                  Rows(k.ws[sp.w], *k.xq, k.xt, k.outs[sp.w], sp.n0, sp.n1, k.avx2);
                },
                &ctx};
  if (g_pool->Run(job, n_chunks)) g_solo_calls.store(kSoloCalls, std::memory_order_relaxed);
}

// ---------------------------------------------------------------------------------------
// FFI handlers.
// Checks one weight's buffers against x's K and the output, and fills its view.
template <class QB, class DB, class MB, class OB>
ffi::Error MakeWeights(Fmt fmt, int64_t M, int64_t K, const QB& qs, const DB& d, const MB& mins,
                       const OB& out, Weights* w) {
  auto dq = qs.dimensions();
  if (dq.size() != 2) return ffi::Error::InvalidArgument("jaxlm quant kernel: qs must be 2-D [N, bytes]");
  const int64_t N = dq[0];
  const int64_t want = (fmt == Fmt::kQ8_0 || fmt == Fmt::kI8) ? K : K / 2;
  if (dq[1] != want) return ffi::Error::InvalidArgument("jaxlm quant kernel: qs row length does not match K");
  const int64_t n_scales = fmt == Fmt::kI8 ? N : N * (K / kBlock);
  if ((int64_t)d.element_count() != n_scales)
    return ffi::Error::InvalidArgument("jaxlm quant kernel: scale array has the wrong size");
  if (fmt == Fmt::kQ4_1 && (int64_t)mins.element_count() != n_scales)
    return ffi::Error::InvalidArgument("jaxlm quant kernel: min array has the wrong size");
  auto dout = out.dimensions();
  if (dout.size() != 2 || dout[0] != M || dout[1] != N)
    return ffi::Error::InvalidArgument("jaxlm quant kernel: output must be [M, N]");
  w->fmt = fmt;
  w->N = (int)N;
  w->K = (int)K;
  w->nb = (int)(K / kBlock);
  w->qs = (const uint8_t*)qs.untyped_data();
  if (fmt == Fmt::kI8) {
    w->s = (const float*)d.untyped_data();
  } else {
    w->d = (const uint16_t*)d.untyped_data();
  }
  if (fmt == Fmt::kQ4_1) w->m = (const uint16_t*)mins.untyped_data();
  return ffi::Error::Success();
}

ffi::Error CheckX(ffi::Buffer<ffi::F32> x, int64_t* M, int64_t* K) {
  auto dx = x.dimensions();
  if (dx.size() != 2) return ffi::Error::InvalidArgument("jaxlm quant kernel: x must be 2-D [M, K]");
  *M = dx[0];
  *K = dx[1];
  if (*K % kBlock != 0) return ffi::Error::InvalidArgument("jaxlm quant kernel: K must be a multiple of 32");
  return ffi::Error::Success();
}

// The one handler: 1-8 weights of one format against the same x (a single product is one
// weight). args are (qs, d) per weight, plus m for q4_1; one float32 [M, N_i] result per
// weight. fmt: 0 q8_0, 1 q4_0, 2 q4_1, 3 int8.
ffi::Error Qmm(ffi::Buffer<ffi::F32> x, ffi::RemainingArgs args, ffi::RemainingRets rets,
               int64_t fmt_code, int64_t threads, int64_t act_bits) {
  if (act_bits != 8 && act_bits != 16) return ffi::Error::InvalidArgument("jaxlm quant kernel: act_bits must be 8 or 16");
  if (fmt_code < 0 || fmt_code > 3) return ffi::Error::InvalidArgument("jaxlm quant kernel: unknown format");
  const Fmt fmt = (Fmt)fmt_code;
  int64_t M, K;
  if (auto e = CheckX(x, &M, &K); e.failure()) return e;
  const size_t per = fmt == Fmt::kQ4_1 ? 3 : 2;
  const size_t n = rets.size();
  if (n == 0 || n > 8 || args.size() != per * n)
    return ffi::Error::InvalidArgument("jaxlm quant kernel: multi call needs 1-8 weights and their arrays");
  Weights ws[8];
  float* outs[8];
  for (size_t i = 0; i < n; ++i) {
    auto qs = args.get<ffi::AnyBuffer>(per * i);
    auto d = args.get<ffi::AnyBuffer>(per * i + 1);
    auto m = args.get<ffi::AnyBuffer>(per * i + per - 1);
    auto o = rets.get<ffi::AnyBuffer>(i);
    if (!qs.has_value() || !d.has_value() || !m.has_value() || !o.has_value())
      return ffi::Error::InvalidArgument("jaxlm quant kernel: could not read a multi-call buffer");
    if ((*o)->element_type() != ffi::DataType::F32)
      return ffi::Error::InvalidArgument("jaxlm quant kernel: outputs must be float32");
    const bool q8 = fmt == Fmt::kQ8_0 || fmt == Fmt::kI8;
    if (qs->element_type() != (q8 ? ffi::DataType::S8 : ffi::DataType::U8) ||
        d->element_type() != (fmt == Fmt::kI8 ? ffi::DataType::F32 : ffi::DataType::F16) ||
        (fmt == Fmt::kQ4_1 && m->element_type() != ffi::DataType::F16))
      return ffi::Error::InvalidArgument("jaxlm quant kernel: a multi-call array has the wrong dtype");
    if (auto e = MakeWeights(fmt, M, K, *qs, *d, *m, **o, &ws[i]); e.failure()) return e;
    outs[i] = (float*)(*o)->untyped_data();
  }
  if (M == 0) return ffi::Error::Success();
  ComputeMany(ws, outs, (int)n, x.typed_data(), (int)M, (int)threads, (int)act_bits);
  return ffi::Error::Success();
}

}  // namespace

#define JAXLM_EXPORT extern "C" __attribute__((visibility("default")))

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxlmQmm, Qmm,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<int64_t>("fmt")
                                  .Attr<int64_t>("num_threads")
                                  .Attr<int64_t>("act_bits"));

// 2 when batched products use AVX-512 VNNI, 1 for AVX2/FMA/F16C, 0 for the scalar path.
JAXLM_EXPORT int jaxlm_quant_isa() { return Isa(); }
// Threads used when a call passes num_threads = 0.
JAXLM_EXPORT int jaxlm_quant_default_threads() { return DefaultThreads(); }
// ABI version of this library, checked by the Python wrapper.
JAXLM_EXPORT int jaxlm_quant_abi_version() { return 5; }
