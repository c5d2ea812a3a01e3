// The global binary term's attention in inference, AVX-512 (built, loaded and explained by
// lesa/fused_cpu.py; the math is lesa/chunked.py's):
//
//     out_i = sum_j softmax_j(s_ij) v_j,   s_ij = q_i.k_j + by_row_i[y_j] + by_col_i[x_j]
//
// with q pre-scaled by 1/sqrt(d). A group of G query rows keeps its logits (G x L floats,
// 128 KiB at L = 4096) in L2 across three passes:
//   1. logits: the bias from the two small tables, then q k^T accumulated in registers (G rows
//      x 32 keys per step, k packed per tile of 32 keys so each step reads 2 KiB contiguously),
//      the row maxima on the way;
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

// exp(s - shift) = 2^t, t = s log2(e) - shift log2(e) (one FMA; an error in the shift's
// product is common to the row and cancels in the softmax), split as t = n + f with n an integer
// and |f| <= 1/2: 2^f by a degree-5 polynomial (a least-squares fit with the error equalised,
// 2.3e-7 relative at most in float32), times 2^n by scalef. Exactly 0 where t < -127 (and for
// -inf: masked or padding keys); NaN stays NaN.
inline __m512 exp_shifted(__m512 s, __m512 neg_shift_log2e) {
  const __m512 t = _mm512_fmadd_ps(s, _mm512_set1_ps(1.44269504088896341f), neg_shift_log2e);
  const __mmask16 keep = _mm512_cmp_ps_mask(t, _mm512_set1_ps(-127.0f), _CMP_NLT_UQ);
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(1.327483681961894e-3f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.67552699148655e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550718307495117e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022120237350464e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931469440460205e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0000001192092896f));
  return _mm512_maskz_scalef_ps(keep, p, n);
}

inline __mmask16 tail_mask(int64_t remaining) {
  return remaining >= 16 ? __mmask16(0xFFFF)
                        : remaining <= 0 ? __mmask16(0) : __mmask16((1u << remaining) - 1u);
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

constexpr int64_t TILE = 32;  // keys per step of pass 1 (two vectors)
constexpr float NEG_INF = -std::numeric_limits<float>::infinity();

// Pass 1 for G rows: s[g] += q[g] k^T over all key tiles, and the row maxima (16 lanes per row
// in vmax). qg: the G rows' q, channel-major (qg[c * G + g]); kt: (tiles, d, 32). Each pass is
// its own function so that the compiler keeps its accumulators in registers; the maxima go
// through memory for the same reason (inlined together, or with the maxima in registers,
// GCC 12 ran out of vector registers and re-read k from the stack for every FMA).
template <int G>
__attribute__((noinline)) void logits(const float* qg, const float* kt, float* s,
                                      int64_t stride, int64_t tiles, int64_t d,
                                      float* vmax) {
#pragma GCC unroll 16
  for (int g = 0; g < G; ++g) _mm512_store_ps(vmax + 16 * g, _mm512_set1_ps(NEG_INF));
  for (int64_t t = 0; t < tiles; ++t) {
    const float* k = kt + t * d * TILE;
    float* st = s + t * TILE;
    __m512 acc0[G], acc1[G];
#pragma GCC unroll 16
    for (int g = 0; g < G; ++g) {
      acc0[g] = _mm512_load_ps(st + g * stride);
      acc1[g] = _mm512_load_ps(st + g * stride + 16);
    }
    for (int64_t c = 0; c < d; ++c) {
      const __m512 k0 = _mm512_loadu_ps(k + c * TILE);
      const __m512 k1 = _mm512_loadu_ps(k + c * TILE + 16);
#pragma GCC unroll 16
      for (int g = 0; g < G; ++g) {
        const __m512 qc = _mm512_set1_ps(qg[c * G + g]);
        acc0[g] = _mm512_fmadd_ps(qc, k0, acc0[g]);
        acc1[g] = _mm512_fmadd_ps(qc, k1, acc1[g]);
      }
    }
#pragma GCC unroll 16
    for (int g = 0; g < G; ++g) {
      _mm512_store_ps(st + g * stride, acc0[g]);
      _mm512_store_ps(st + g * stride + 16, acc1[g]);
      const __m512 m = _mm512_max_ps(_mm512_load_ps(vmax + 16 * g),
                                     _mm512_max_ps(acc0[g], acc1[g]));
      _mm512_store_ps(vmax + 16 * g, m);
    }
  }
}

__attribute__((noinline)) float row_max(const float* s, int64_t n) {  // n: a multiple of 16
  __m512 m0 = _mm512_set1_ps(NEG_INF), m1 = m0;
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    m0 = _mm512_max_ps(m0, _mm512_load_ps(s + j));
    m1 = _mm512_max_ps(m1, _mm512_load_ps(s + j + 16));
  }
  if (j < n) m0 = _mm512_max_ps(m0, _mm512_load_ps(s + j));
  return _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
}

// Pass 2 for one row: p = exp(s - shift) in place over n (a multiple of 16), returns the sum.
__attribute__((noinline)) float exponentiate(float* s, int64_t n, float shift) {
  const __m512 m = _mm512_set1_ps(-shift * 1.44269504088896341f);
  __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    const __m512 p0 = exp_shifted(_mm512_load_ps(s + j), m);
    const __m512 p1 = exp_shifted(_mm512_load_ps(s + j + 16), m);
    _mm512_store_ps(s + j, p0);
    _mm512_store_ps(s + j + 16, p1);
    sum0 = _mm512_add_ps(sum0, p0);
    sum1 = _mm512_add_ps(sum1, p1);
  }
  for (; j < n; j += 16) {
    const __m512 p = exp_shifted(_mm512_load_ps(s + j), m);
    _mm512_store_ps(s + j, p);
    sum0 = _mm512_add_ps(sum0, p);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(sum0, sum1));
}

// Pass 3 for G rows: res[g] = sum_j p[g][j] v[j] over L keys, NV vectors of value channels.
template <int G, int NV>
__attribute__((noinline)) void weighted_sum(const float* s, int64_t stride, const float* v,
                                            int64_t L, int64_t dv, float* res) {
  __m512 acc[G][NV];
#pragma GCC unroll 16
  for (int g = 0; g < G; ++g)
#pragma GCC unroll 4
    for (int t = 0; t < NV; ++t) acc[g][t] = _mm512_setzero_ps();
  __mmask16 vm[NV];
#pragma GCC unroll 4
  for (int t = 0; t < NV; ++t) vm[t] = tail_mask(dv - 16 * t);
  for (int64_t j = 0; j < L; ++j) {
    __m512 vj[NV];
#pragma GCC unroll 4
    for (int t = 0; t < NV; ++t) vj[t] = _mm512_maskz_loadu_ps(vm[t], v + j * dv + 16 * t);
#pragma GCC unroll 16
    for (int g = 0; g < G; ++g) {
      const __m512 p = _mm512_set1_ps(s[g * stride + j]);
#pragma GCC unroll 4
      for (int t = 0; t < NV; ++t) acc[g][t] = _mm512_fmadd_ps(p, vj[t], acc[g][t]);
    }
  }
#pragma GCC unroll 16
  for (int g = 0; g < G; ++g)
#pragma GCC unroll 4
    for (int t = 0; t < NV; ++t) _mm512_storeu_ps(res + (g * NV + t) * 16, acc[g][t]);
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
  alignas(64) float vmax[G * 16];
  logits<G>(qg, pb.kt + e * tiles * d * TILE, s, stride, tiles, d, vmax);

  // 2. row maxima, exp(s - max) in place (0 on the padding), row sums (and a_ii)
  float inv_sum[G], diag[G];
  for (int g = 0; g < G; ++g) {
    float* sg = s + g * stride;
    const int64_t i = rows[g];
    float mx = _mm512_reduce_max_ps(_mm512_load_ps(vmax + 16 * g));
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
  alignas(64) float res[G * NV * 16];
  weighted_sum<G, NV>(s, stride, pb.v + e * L * dv, L, dv, res);
  for (int g = 0; g < G && r0 + g < r_end; ++g) {
    float* o = pb.out + (e * L + rows[g]) * dv;
    for (int64_t c = 0; c < dv; ++c) o[c] = res[g * NV * 16 + c] * inv_sum[g];
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
  switch ((dv + 15) / 16) {
    case 1: return run<8, 1>(pb) ? 0 : 2;
    case 2: return run<8, 2>(pb) ? 0 : 2;
    case 3: return run<6, 3>(pb) ? 0 : 2;
    case 4: return run<4, 4>(pb) ? 0 : 2;
    default: return 1;
  }
}

}  // extern "C"
