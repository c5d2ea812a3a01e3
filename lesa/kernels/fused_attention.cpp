// The global binary term's attention in inference, AVX-512 or AVX2 (built, loaded and explained
// by lesa/kernels/fused_cpu.py; the math is lesa/kernels/chunked.py's):
//
//     out_i = sum_j softmax_j(s_ij) v_j,   s_ij = q_i.k_j + by_row_i[y_j] + by_col_i[x_j]
//
// with q pre-scaled by 1/sqrt(d). A group of G query rows keeps its logits (G x L floats,
// 128 KiB at L = 4096) in L2 across three passes:
//   1. logits: the bias from the two small tables, then q k^T accumulated in registers (G rows
//      x TILE keys per step, two vectors: 32 keys with AVX-512, 16 with AVX2; k packed per tile
//      so each step reads d x TILE floats contiguously), the row maxima on the way;
//   2. p = exp(s - max) in place and the row sums;
//   3. the p v product (G rows x dv channels in registers, one load of v per G rows), divided
//      by the row sums at the end.
// Work is split in tasks of (entry, block of rows) over torch's intra-op threads
// (at::parallel_for: the same OpenMP pool as torch's own ops, so no second pool competes with
// its spinning threads).
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <vector>

namespace {

// The few vector operations the passes use, for the instruction set this file is compiled for
// (-mavx512f or -mavx2, lesa/kernels/fused_cpu.py): W float lanes per vector.
#if defined(__AVX512F__)
using V = __m512;
constexpr int64_t W = 16;
inline V set1(float x) { return _mm512_set1_ps(x); }
inline V zero() { return _mm512_setzero_ps(); }
inline V load(const float* p) { return _mm512_load_ps(p); }  // 64-byte aligned
inline V loadu(const float* p) { return _mm512_loadu_ps(p); }
inline void store(float* p, V x) { _mm512_store_ps(p, x); }
inline void storeu(float* p, V x) { _mm512_storeu_ps(p, x); }
inline V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
inline V add(V a, V b) { return _mm512_add_ps(a, b); }
inline V vmax_of(V a, V b) { return _mm512_max_ps(a, b); }
inline float reduce_max(V x) { return _mm512_reduce_max_ps(x); }
inline float reduce_add(V x) { return _mm512_reduce_add_ps(x); }
// a mask of the first `remaining` lanes (all if >= W, none if <= 0), and a load of those lanes
// (zeros elsewhere)
using Mask = __mmask16;
inline Mask first_lanes(int64_t remaining) {
  return remaining >= 16 ? Mask(0xFFFF) : remaining <= 0 ? Mask(0) : Mask((1u << remaining) - 1u);
}
inline V load_masked(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
#else
using V = __m256;
constexpr int64_t W = 8;
inline V set1(float x) { return _mm256_set1_ps(x); }
inline V zero() { return _mm256_setzero_ps(); }
inline V load(const float* p) { return _mm256_load_ps(p); }  // 32-byte aligned
inline V loadu(const float* p) { return _mm256_loadu_ps(p); }
inline void store(float* p, V x) { _mm256_store_ps(p, x); }
inline void storeu(float* p, V x) { _mm256_storeu_ps(p, x); }
inline V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
inline V add(V a, V b) { return _mm256_add_ps(a, b); }
inline V vmax_of(V a, V b) { return _mm256_max_ps(a, b); }
inline float reduce_max(V x) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}
inline float reduce_add(V x) {
  __m128 m = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  m = _mm_add_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_add_ss(m, _mm_movehdup_ps(m)));
}
using Mask = __m256i;
inline Mask first_lanes(int64_t remaining) {
  return _mm256_cmpgt_epi32(
      _mm256_set1_epi32(static_cast<int>(std::clamp<int64_t>(remaining, 0, 8))),
      _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline V load_masked(const float* p, Mask m) { return _mm256_maskload_ps(p, m); }
#endif

// exp(s - shift) = 2^t, t = s log2(e) - shift log2(e) (one FMA; an error in the shift's
// product is common to the row and cancels in the softmax), split as t = n + f with n an integer
// and |f| <= 1/2: 2^f by a degree-5 polynomial (a least-squares fit with the error equalised,
// 2.3e-7 relative at most in float32), times 2^n (AVX-512: scalef; AVX2: n written into the
// exponent bits, so t in [-127, -126.5) gives 0 instead of a denormal, < 1e-38 of the row's
// largest weight, 1). Exactly 0 where t < -127 (and for -inf: masked or padding keys); NaN
// stays NaN.
inline V exp_shifted(V s, V neg_shift_log2e) {
  const V t = fmadd(s, set1(1.44269504088896341f), neg_shift_log2e);
#if defined(__AVX512F__)
  const __mmask16 keep = _mm512_cmp_ps_mask(t, set1(-127.0f), _CMP_NLT_UQ);
  const V n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
  const V keep = _mm256_cmp_ps(t, set1(-127.0f), _CMP_NLT_UQ);
  const V n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#endif
  const V f = t - n;
  V p = set1(1.327483681961894e-3f);
  p = fmadd(p, f, set1(9.67552699148655e-3f));
  p = fmadd(p, f, set1(5.550718307495117e-2f));
  p = fmadd(p, f, set1(2.4022120237350464e-1f));
  p = fmadd(p, f, set1(6.931469440460205e-1f));
  p = fmadd(p, f, set1(1.0000001192092896f));
#if defined(__AVX512F__)
  return _mm512_maskz_scalef_ps(keep, p, n);
#else
  const __m256i bits = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(keep, _mm256_mul_ps(p, _mm256_castsi256_ps(bits)));
#endif
}

struct Problem {
  const float *q, *kt, *v, *by_row, *by_col;
  float *out, *a_ii;
  int64_t n, length, d, dv, height, width;
  int mode;  // 0 keep, 1 mask (j = i removed), 2 report (also write a_ii)
  // element strides of by_row and by_col over (entry, query row y_i, query column x_i); their
  // last axis (key row / key column) is contiguous
  int64_t row_se, row_sy, row_sx, col_se, col_sy, col_sx;
};

constexpr int64_t TILE = 2 * W;  // keys per step of pass 1 (two vectors)
constexpr float NEG_INF = -std::numeric_limits<float>::infinity();

// Pass 1 for G rows: s[g] += q[g] k^T over all key tiles, and the row maxima (W lanes per row
// in vmax). qg: the G rows' q, channel-major (qg[c * G + g]); kt: (tiles, d, 32). Each pass is
// its own function so that the compiler keeps its accumulators in registers; the maxima go
// through memory for the same reason (inlined together, or with the maxima in registers,
// GCC 12 ran out of vector registers and re-read k from the stack for every FMA).
template <int G>
__attribute__((noinline)) void logits(const float* qg, const float* kt, float* s,
                                      int64_t stride, int64_t tiles, int64_t d,
                                      float* vmax) {
#pragma GCC unroll 16
  for (int g = 0; g < G; ++g) store(vmax + W * g, set1(NEG_INF));
  for (int64_t t = 0; t < tiles; ++t) {
    const float* k = kt + t * d * TILE;
    float* st = s + t * TILE;
    V acc0[G], acc1[G];
#pragma GCC unroll 16
    for (int g = 0; g < G; ++g) {
      acc0[g] = load(st + g * stride);
      acc1[g] = load(st + g * stride + W);
    }
    for (int64_t c = 0; c < d; ++c) {
      const V k0 = loadu(k + c * TILE);
      const V k1 = loadu(k + c * TILE + W);
#pragma GCC unroll 16
      for (int g = 0; g < G; ++g) {
        const V qc = set1(qg[c * G + g]);
        acc0[g] = fmadd(qc, k0, acc0[g]);
        acc1[g] = fmadd(qc, k1, acc1[g]);
      }
    }
#pragma GCC unroll 16
    for (int g = 0; g < G; ++g) {
      store(st + g * stride, acc0[g]);
      store(st + g * stride + W, acc1[g]);
      store(vmax + W * g, vmax_of(load(vmax + W * g), vmax_of(acc0[g], acc1[g])));
    }
  }
}

__attribute__((noinline)) float row_max(const float* s, int64_t n) {  // n: a multiple of W
  V m0 = set1(NEG_INF), m1 = m0;
  int64_t j = 0;
  for (; j + 2 * W <= n; j += 2 * W) {
    m0 = vmax_of(m0, load(s + j));
    m1 = vmax_of(m1, load(s + j + W));
  }
  if (j < n) m0 = vmax_of(m0, load(s + j));
  return reduce_max(vmax_of(m0, m1));
}

// Pass 2 for one row: p = exp(s - shift) in place over n (a multiple of W), returns the sum.
__attribute__((noinline)) float exponentiate(float* s, int64_t n, float shift) {
  const V m = set1(-shift * 1.44269504088896341f);
  V sum0 = zero(), sum1 = zero();
  int64_t j = 0;
  for (; j + 2 * W <= n; j += 2 * W) {
    const V p0 = exp_shifted(load(s + j), m);
    const V p1 = exp_shifted(load(s + j + W), m);
    store(s + j, p0);
    store(s + j + W, p1);
    sum0 = add(sum0, p0);
    sum1 = add(sum1, p1);
  }
  for (; j < n; j += W) {
    const V p = exp_shifted(load(s + j), m);
    store(s + j, p);
    sum0 = add(sum0, p);
  }
  return reduce_add(add(sum0, sum1));
}

// Pass 3 for G rows: res[g] = sum_j p[g][j] v[j] over L keys, NV vectors of value channels.
template <int G, int NV>
__attribute__((noinline)) void weighted_sum(const float* s, int64_t stride, const float* v,
                                            int64_t L, int64_t dv, float* res) {
  V acc[G][NV];
#pragma GCC unroll 16
  for (int g = 0; g < G; ++g)
#pragma GCC unroll 4
    for (int t = 0; t < NV; ++t) acc[g][t] = zero();
  Mask vm[NV];
#pragma GCC unroll 4
  for (int t = 0; t < NV; ++t) vm[t] = first_lanes(dv - W * t);
  for (int64_t j = 0; j < L; ++j) {
    V vj[NV];
#pragma GCC unroll 4
    for (int t = 0; t < NV; ++t) vj[t] = load_masked(v + j * dv + W * t, vm[t]);
#pragma GCC unroll 16
    for (int g = 0; g < G; ++g) {
      const V p = set1(s[g * stride + j]);
#pragma GCC unroll 4
      for (int t = 0; t < NV; ++t) acc[g][t] = fmadd(p, vj[t], acc[g][t]);
    }
  }
#pragma GCC unroll 16
  for (int g = 0; g < G; ++g)
#pragma GCC unroll 4
    for (int t = 0; t < NV; ++t) storeu(res + (g * NV + t) * W, acc[g][t]);
}

// G query rows r0.. (indices clamped to the last row of the block, so a short last group
// repeats a row and writes it once). s: G rows of `stride` floats, 64-byte aligned; qg: G * d.
template <int G, int NV>
void row_group(const Problem& pb, int64_t e, int64_t r0, int64_t r_end, float* s,
               int64_t stride, float* qg) {
  const int64_t L = pb.length, d = pb.d, dv = pb.dv;
  const int64_t tiles = (L + TILE - 1) / TILE;
  int64_t rows[G];
  for (int g = 0; g < G; ++g) rows[g] = std::min(r0 + g, r_end - 1);

  // 1. logits = bias (-inf on the padding keys, whose k is zero), + q k^T
  for (int g = 0; g < G; ++g) {
    const int64_t yi = rows[g] / pb.width, xi = rows[g] % pb.width;
    const float* br = pb.by_row + e * pb.row_se + yi * pb.row_sy + xi * pb.row_sx;
    const float* bc = pb.by_col + e * pb.col_se + yi * pb.col_sy + xi * pb.col_sx;
    const float* q = pb.q + (e * L + rows[g]) * d;
    float* sg = s + g * stride;
    for (int64_t y = 0; y < pb.height; ++y) {
      const float b = br[y];
      float* dst = sg + y * pb.width;
      for (int64_t x = 0; x < pb.width; ++x) dst[x] = b + bc[x];
    }
    for (int64_t j = L; j < tiles * TILE; ++j) sg[j] = NEG_INF;
    for (int64_t c = 0; c < d; ++c) qg[c * G + g] = q[c];
  }
  alignas(64) float vmax[G * W];
  logits<G>(qg, pb.kt + e * tiles * d * TILE, s, stride, tiles, d, vmax);

  // 2. row maxima, exp(s - max) in place (0 on the padding), row sums (and a_ii)
  float inv_sum[G], diag[G];
  for (int g = 0; g < G; ++g) {
    float* sg = s + g * stride;
    const int64_t i = rows[g];
    float mx = reduce_max(load(vmax + W * g));
    if (pb.mode == 1) {  // j = i removed: the maximum again if s_ii was it
      const bool was_max = sg[i] >= mx;
      sg[i] = NEG_INF;
      if (was_max) mx = row_max(sg, tiles * TILE);
    }
    const float sum = exponentiate(sg, tiles * TILE, mx);
    inv_sum[g] = 1.0f / sum;
    diag[g] = sg[i] / sum;
  }

  // 3. out = (p v) / sum
  alignas(64) float res[G * NV * W];
  weighted_sum<G, NV>(s, stride, pb.v + e * L * dv, L, dv, res);
  for (int g = 0; g < G && r0 + g < r_end; ++g) {
    float* o = pb.out + (e * L + rows[g]) * dv;
    for (int64_t c = 0; c < dv; ++c) o[c] = res[g * NV * W + c] * inv_sum[g];
    if (pb.a_ii) pb.a_ii[e * L + rows[g]] = diag[g];
  }
}

// Returns false if a thread's buffer could not be allocated (then out is incomplete).
template <int G, int NV>
bool run(const Problem& pb) {
  const int64_t L = pb.length;
  const int64_t block = 4 * G;  // rows per task
  const int64_t blocks = (L + block - 1) / block;
  const int64_t tasks = pb.n * blocks;
  // tasks handed out one by one (not torch's static split): a thread slowed by another process
  // does less of the work instead of holding up the call
  std::atomic<int64_t> next{0};
  std::atomic<bool> allocated{true};
  at::parallel_for(0, std::min<int64_t>(at::get_num_threads(), tasks), 1,
                   [&](int64_t, int64_t) {
    // row stride one cache line past the padded length: rows 4 KiB apart would share L1 sets
    const int64_t stride = (L + TILE - 1) / TILE * TILE + 16;
    const size_t bytes = static_cast<size_t>(G) * stride * sizeof(float);  // a multiple of 64
    std::unique_ptr<float, decltype(&std::free)> s(
        static_cast<float*>(std::aligned_alloc(64, bytes)), &std::free);
    if (!s) {
      allocated = false;
      return;
    }
    std::vector<float> qg(static_cast<size_t>(G) * pb.d);
    for (int64_t t = next++; t < tasks; t = next++) {
      const int64_t e = t / blocks, r0 = (t % blocks) * block, r_end = std::min(r0 + block, L);
      for (int64_t r = r0; r < r_end; r += G)
        row_group<G, NV>(pb, e, r, r_end, s.get(), stride, qg.data());
    }
  });
  return allocated;
}

}  // namespace

extern "C" {

// Returns 0 on success, 1 if dv is out of the supported range (1..64), 2 if a buffer could not
// be allocated. table_strides: the six strides of Problem (by_row's three, then by_col's).
int lesa_relative_attention_f32(const float* q, const float* kt, const float* v,
                                const float* by_row, const float* by_col, float* out,
                                float* a_ii, int64_t n, int64_t length, int64_t d, int64_t dv,
                                int64_t height, int64_t width, int mode,
                                const int64_t* table_strides) {
  const int64_t* ts = table_strides;
  const Problem pb{q,      kt,     v,      by_row, by_col, out,    a_ii,   n,
                   length, d,      dv,     height, width,  mode,   ts[0],  ts[1],
                   ts[2],  ts[3],  ts[4],  ts[5]};
  // G rows per group by value vectors (NV): about as many as let pass 3's G x NV accumulators,
  // NV value vectors and a broadcast fit the vector registers (32 with AVX-512, 16 with AVX2).
  // (AVX2 with NV = 4 takes G = 4, spilling a few: it measured faster than G = 2, 3 or 6)
  if (dv < 1 || dv > 64) return 1;
#if defined(__AVX512F__)
  switch ((dv + W - 1) / W) {
    case 1: return run<8, 1>(pb) ? 0 : 2;
    case 2: return run<8, 2>(pb) ? 0 : 2;
    case 3: return run<6, 3>(pb) ? 0 : 2;
    default: return run<4, 4>(pb) ? 0 : 2;
  }
#else
  switch ((dv + W - 1) / W) {
    case 1: return run<6, 1>(pb) ? 0 : 2;
    case 2: return run<6, 2>(pb) ? 0 : 2;
    case 3: return run<4, 3>(pb) ? 0 : 2;
    case 4: return run<4, 4>(pb) ? 0 : 2;
    case 5: case 6: return run<2, 6>(pb) ? 0 : 2;
    default: return run<1, 8>(pb) ? 0 : 2;
  }
#endif
}

// keys per tile of the packed k that the caller passes (2 vectors: 32 with AVX-512, 16 AVX2)
int64_t lesa_tile() { return TILE; }

}  // extern "C"
