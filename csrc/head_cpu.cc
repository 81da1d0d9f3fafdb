// The output projection ("head") for CPUs, as XLA FFI custom calls: logits = x @ table^T.
//
// bitnet_head_float_cpu: float32 x [M, D] times a bfloat16 or float32 table [V, D] -> float32 [M, V],
//   accumulated in float32 (the exact head: the table's values as stored, no quantization).
// bitnet_head_int8_cpu: int8 x [M, D] times an int8 table [V, D] whose values lie in [-127, 127]
//   -> exact int32 [M, V] (the quantized head; the caller applies the per-row and per-token scales).
//
// bitnet_head_greedy_cpu: the exact head's argmax per row of x [M] (int32), screened through an int8
//   copy of the table so that only candidate rows of the float table are read (below), and how many
//   rows were recomputed exactly [M].
//
// The table is read row-major, so the same array serves the embedding lookup. Rows are split into
// contiguous chunks over XLA's intra-op thread pool; each chunk streams its rows once per 4 rows of x.

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "common.h"

namespace bitnet {
namespace {

struct HeadProblem {
  const void* x;
  const void* table;
  void* out;
  int64_t m, v, d;
};

inline float bf16_to_f32(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

inline float to_f32(uint16_t h) { return bf16_to_f32(h); }

// Partial sums per output of the float head. Fixed, with one table row per tile (run_rows<K, false>):
// an output's value is the same for every M, thread count and chunking, so the screened greedy head
// below can recompute single rows bit for bit.
constexpr int kFloatSums = 4;
inline float to_f32(float f) { return f; }

// ---------------------------------------------------------------------------------------------
// Scalar paths.
// ---------------------------------------------------------------------------------------------

template <typename T>
void float_scalar_rows(const HeadProblem& p, int64_t v_begin, int64_t v_end, int64_t m_begin) {
  const float* x = static_cast<const float*>(p.x);
  const T* t = static_cast<const T*>(p.table);
  float* out = static_cast<float*>(p.out);
  for (int64_t v = v_begin; v < v_end; ++v) {
    for (int64_t m = m_begin; m < p.m; ++m) {
      float acc = 0.f;
      for (int64_t d = 0; d < p.d; ++d) acc += to_f32(t[v * p.d + d]) * x[m * p.d + d];
      out[m * p.v + v] = acc;
    }
  }
}

void int8_scalar_rows(const HeadProblem& p, int64_t v_begin, int64_t v_end, int64_t m_begin) {
  const int8_t* x = static_cast<const int8_t*>(p.x);
  const int8_t* t = static_cast<const int8_t*>(p.table);
  int32_t* out = static_cast<int32_t*>(p.out);
  for (int64_t v = v_begin; v < v_end; ++v) {
    for (int64_t m = m_begin; m < p.m; ++m) {
      int32_t acc = 0;
      for (int64_t d = 0; d < p.d; ++d) acc += static_cast<int32_t>(t[v * p.d + d]) * x[m * p.d + d];
      out[m * p.v + v] = acc;
    }
  }
}

// The scalar paths as tile types (their "tile" is all rows given; the driver passes 4 or 1).
template <typename T>
struct ScalarFloat {
  template <int RV, int MB>
  static void tile(const HeadProblem& p, int64_t v0, int64_t m0, const int32_t*) {
    HeadProblem q = p;
    q.m = m0 + MB;
    float_scalar_rows<T>(q, v0, v0 + RV, m0);
  }
};
struct ScalarInt8 {
  template <int RV, int MB>
  static void tile(const HeadProblem& p, int64_t v0, int64_t m0, const int32_t*) {
    HeadProblem q = p;
    q.m = m0 + MB;
    int8_scalar_rows(q, v0, v0 + RV, m0);
  }
};

#if BITNET_X86

// ---------------------------------------------------------------------------------------------
// AVX-512 paths: RV table rows x MB rows of x per tile, one horizontal sum per output.
// ---------------------------------------------------------------------------------------------

BITNET_TARGET_AVX512 inline __m512 load16(const uint16_t* p, __mmask16 k) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, p)), 16));
}
BITNET_TARGET_AVX512 inline __m512 load16(const float* p, __mmask16 k) { return _mm512_maskz_loadu_ps(k, p); }
BITNET_TARGET_AVX512 inline __m512 load16(const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(
      _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}
BITNET_TARGET_AVX512 inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }

// Each output of the float head keeps kFloatSums partial sums over consecutive vectors (independent
// chains), whatever the tile: its summation order, and so its rounding, does not depend on M.
template <typename T, int RV, int MB>
BITNET_TARGET_AVX512 void float_tile_avx512(const HeadProblem& p, int64_t v0, int64_t m0, const int32_t*) {
  constexpr int S = kFloatSums;
  const float* x = static_cast<const float*>(p.x) + m0 * p.d;
  const T* t = static_cast<const T*>(p.table) + v0 * p.d;
  __m512 acc[RV][MB][S];
  for (int r = 0; r < RV; ++r)
    for (int j = 0; j < MB; ++j)
      for (int q = 0; q < S; ++q) acc[r][j][q] = _mm512_setzero_ps();
  const int64_t d_main = p.d / (16 * S) * (16 * S);
  for (int64_t d0 = 0; d0 < d_main; d0 += 16 * S) {  // full vectors, no masks
    for (int q = 0; q < S; ++q) {
      const int64_t d = d0 + 16 * q;
      __m512 e[RV];
      for (int r = 0; r < RV; ++r) e[r] = load16(t + r * p.d + d);
      for (int j = 0; j < MB; ++j) {
        const __m512 xv = _mm512_loadu_ps(x + j * p.d + d);
        for (int r = 0; r < RV; ++r) acc[r][j][q] = _mm512_fmadd_ps(e[r], xv, acc[r][j][q]);
      }
    }
  }
  for (int64_t d = d_main; d < p.d; d += 16) {  // the tail, masked
    const __mmask16 k = static_cast<__mmask16>((1u << std::min<int64_t>(16, p.d - d)) - 1u);
    __m512 e[RV];
    for (int r = 0; r < RV; ++r) e[r] = load16(t + r * p.d + d, k);
    for (int j = 0; j < MB; ++j) {
      const __m512 xv = _mm512_maskz_loadu_ps(k, x + j * p.d + d);
      for (int r = 0; r < RV; ++r) acc[r][j][0] = _mm512_fmadd_ps(e[r], xv, acc[r][j][0]);
    }
  }
  float* out = static_cast<float*>(p.out);
  for (int j = 0; j < MB; ++j) {
    for (int r = 0; r < RV; ++r) {
      __m512 total = acc[r][j][0];
      for (int q = 1; q < S; ++q) total = _mm512_add_ps(total, acc[r][j][q]);
      out[(m0 + j) * p.v + v0 + r] = _mm512_reduce_add_ps(total);
    }
  }
}

template <int RV, int MB>
BITNET_TARGET_AVX512 void int8_tile_avx512(const HeadProblem& p, int64_t v0, int64_t m0, const int32_t* xsum) {
  constexpr int S = RV * MB >= 4 ? 1 : 4 / (RV * MB);
  const int8_t* x = static_cast<const int8_t*>(p.x) + m0 * p.d;
  const int8_t* t = static_cast<const int8_t*>(p.table) + v0 * p.d;
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  __m512i acc[RV][MB][S];
  for (int r = 0; r < RV; ++r)
    for (int j = 0; j < MB; ++j)
      for (int q = 0; q < S; ++q) acc[r][j][q] = _mm512_setzero_si512();
  const int64_t d_main = p.d / (64 * S) * (64 * S);
  for (int64_t d0 = 0; d0 < d_main; d0 += 64 * S) {  // full vectors, no masks
    for (int q = 0; q < S; ++q) {
      const int64_t d = d0 + 64 * q;
      __m512i e[RV];  // table + 128 as unsigned bytes
      for (int r = 0; r < RV; ++r) e[r] = _mm512_xor_si512(_mm512_loadu_si512(t + r * p.d + d), flip);
      for (int j = 0; j < MB; ++j) {
        const __m512i xv = _mm512_loadu_si512(x + j * p.d + d);
        for (int r = 0; r < RV; ++r) acc[r][j][q] = _mm512_dpbusd_epi32(acc[r][j][q], e[r], xv);
      }
    }
  }
  for (int64_t d = d_main; d < p.d; d += 64) {  // the tail, masked: masked-off lanes meet x = 0
    const int64_t left = std::min<int64_t>(64, p.d - d);
    const __mmask64 k = left == 64 ? ~__mmask64{0} : ((__mmask64{1} << left) - 1);
    __m512i e[RV];
    for (int r = 0; r < RV; ++r) e[r] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(k, t + r * p.d + d), flip);
    for (int j = 0; j < MB; ++j) {
      const __m512i xv = _mm512_maskz_loadu_epi8(k, x + j * p.d + d);
      for (int r = 0; r < RV; ++r) acc[r][j][0] = _mm512_dpbusd_epi32(acc[r][j][0], e[r], xv);
    }
  }
  int32_t* out = static_cast<int32_t*>(p.out);
  for (int j = 0; j < MB; ++j) {
    for (int r = 0; r < RV; ++r) {
      __m512i total = acc[r][j][0];
      for (int q = 1; q < S; ++q) total = _mm512_add_epi32(total, acc[r][j][q]);
      out[(m0 + j) * p.v + v0 + r] = _mm512_reduce_add_epi32(total) - 128 * xsum[m0 + j];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// AVX2 paths (8 float lanes / 32 bytes; the int8 one uses vpsignb/vpabsb so vpmaddubsw cannot saturate).
// ---------------------------------------------------------------------------------------------

BITNET_TARGET_AVX2 inline __m256 load8(const uint16_t* p) {
  return _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
}
BITNET_TARGET_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }

BITNET_TARGET_AVX2 inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

BITNET_TARGET_AVX2 inline int32_t hsum256i(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

template <typename T, int RV, int MB>
BITNET_TARGET_AVX2 void float_tile_avx2(const HeadProblem& p, int64_t v0, int64_t m0, const int32_t*) {
  constexpr int S = kFloatSums;
  const float* x = static_cast<const float*>(p.x) + m0 * p.d;
  const T* t = static_cast<const T*>(p.table) + v0 * p.d;
  __m256 acc[RV][MB][S];
  for (int r = 0; r < RV; ++r)
    for (int j = 0; j < MB; ++j)
      for (int q = 0; q < S; ++q) acc[r][j][q] = _mm256_setzero_ps();
  const int64_t d_main = p.d / (8 * S) * (8 * S);
  for (int64_t d0 = 0; d0 < d_main; d0 += 8 * S) {
    for (int q = 0; q < S; ++q) {
      const int64_t d = d0 + 8 * q;
      __m256 e[RV];
      for (int r = 0; r < RV; ++r) e[r] = load8(t + r * p.d + d);
      for (int j = 0; j < MB; ++j) {
        const __m256 xv = _mm256_loadu_ps(x + j * p.d + d);
        for (int r = 0; r < RV; ++r) acc[r][j][q] = _mm256_fmadd_ps(e[r], xv, acc[r][j][q]);
      }
    }
  }
  float* out = static_cast<float*>(p.out);
  for (int j = 0; j < MB; ++j) {
    for (int r = 0; r < RV; ++r) {
      __m256 total = acc[r][j][0];
      for (int q = 1; q < S; ++q) total = _mm256_add_ps(total, acc[r][j][q]);
      float s = hsum256(total);
      for (int64_t d = d_main; d < p.d; ++d) s += to_f32(t[r * p.d + d]) * x[j * p.d + d];
      out[(m0 + j) * p.v + v0 + r] = s;
    }
  }
}

template <int RV, int MB>
BITNET_TARGET_AVX2 void int8_tile_avx2(const HeadProblem& p, int64_t v0, int64_t m0, const int32_t*) {
  const int8_t* x = static_cast<const int8_t*>(p.x) + m0 * p.d;
  const int8_t* t = static_cast<const int8_t*>(p.table) + v0 * p.d;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[RV][MB];
  for (int r = 0; r < RV; ++r)
    for (int j = 0; j < MB; ++j) acc[r][j] = _mm256_setzero_si256();
  const int64_t d_main = p.d / 32 * 32;
  for (int64_t d = 0; d < d_main; d += 32) {
    __m256i e[RV];
    for (int r = 0; r < RV; ++r) e[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t + r * p.d + d));
    for (int j = 0; j < MB; ++j) {
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + j * p.d + d));
      const __m256i ax = _mm256_abs_epi8(xv);  // |x| <= 128 as unsigned, e * sign(x) in [-127, 127]
      for (int r = 0; r < RV; ++r) {
        const __m256i prod = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(e[r], xv));
        acc[r][j] = _mm256_add_epi32(acc[r][j], _mm256_madd_epi16(prod, ones));
      }
    }
  }
  int32_t* out = static_cast<int32_t*>(p.out);
  for (int j = 0; j < MB; ++j) {
    for (int r = 0; r < RV; ++r) {
      int32_t s = hsum256i(acc[r][j]);
      for (int64_t d = d_main; d < p.d; ++d) s += static_cast<int32_t>(t[r * p.d + d]) * x[j * p.d + d];
      out[(m0 + j) * p.v + v0 + r] = s;
    }
  }
}

// Tile functions as types, so one driver serves every kernel.
template <typename T>
struct FloatAvx512 {
  template <int RV, int MB>
  static void tile(const HeadProblem& p, int64_t v0, int64_t m0, const int32_t* xs) {
    float_tile_avx512<T, RV, MB>(p, v0, m0, xs);
  }
};
template <typename T>
struct FloatAvx2 {
  template <int RV, int MB>
  static void tile(const HeadProblem& p, int64_t v0, int64_t m0, const int32_t* xs) {
    float_tile_avx2<T, RV, MB>(p, v0, m0, xs);
  }
};
struct Int8Avx512 {
  template <int RV, int MB>
  static void tile(const HeadProblem& p, int64_t v0, int64_t m0, const int32_t* xs) {
    int8_tile_avx512<RV, MB>(p, v0, m0, xs);
  }
};
struct Int8Avx2 {
  template <int RV, int MB>
  static void tile(const HeadProblem& p, int64_t v0, int64_t m0, const int32_t* xs) {
    int8_tile_avx2<RV, MB>(p, v0, m0, xs);
  }
};

#endif  // BITNET_X86

// Rows [v_begin, v_end) of the table against all rows of x: tiles of 4 table rows x 4, 2, 1 rows of x.
template <typename K, int RV>
void all_rows_of_x(const HeadProblem& p, int64_t v0, const int32_t* xsum) {
  int64_t m0 = 0;
  for (; m0 + 4 <= p.m; m0 += 4) K::template tile<RV, 4>(p, v0, m0, xsum);
  for (; m0 + 2 <= p.m; m0 += 2) K::template tile<RV, 2>(p, v0, m0, xsum);
  for (; m0 < p.m; ++m0) K::template tile<RV, 1>(p, v0, m0, xsum);
}

// Four table rows per tile share each load of x when there are several rows of x (int8 head); with few
// (decode) the head is bound by memory and one row at a time streams faster (as in ternary_cpu.cc).
// The float head always takes one table row per tile (kGroupRows false, see kFloatSums).
template <typename K, bool kGroupRows = true>
void run_rows(const HeadProblem& p, int64_t v_begin, int64_t v_end, const int32_t* xsum) {
  int64_t v = v_begin;
  if (kGroupRows && p.m >= 4) {
    for (; v + 4 <= v_end; v += 4) all_rows_of_x<K, 4>(p, v, xsum);
  }
  for (; v < v_end; ++v) all_rows_of_x<K, 1>(p, v, xsum);
}

// Shared by both handlers: split the table rows over the pool.
template <typename Body>
void split_rows(ffi::ThreadPool& pool, const HeadProblem& p, int64_t row_bytes, Body body) {
  const int64_t threads = thread_count(pool);
  const int64_t per = chunk_size(p.v, threads, 65536 / std::max<int64_t>(1, row_bytes) + 1, 4);
  const int64_t chunks = (p.v + per - 1) / per;
  parallel_chunks(pool, chunks, threads, [&p, per, body](int64_t c) {
    body(p, c * per, std::min(p.v, (c + 1) * per));
  });
}

ffi::Error check_dims(const char* name, ffi::Span<const int64_t> xd, ffi::Span<const int64_t> td) {
  if (xd.size() != 2 || td.size() != 2 || xd[1] != td[1]) {
    return ffi::Error::InvalidArgument(std::string(name) + ": expected x [M, D] and table [V, D]");
  }
  return ffi::Error::Success();
}

ffi::Error HeadFloatImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::AnyBuffer table,
                         ffi::ResultBuffer<ffi::F32> out) {
  const auto td = table.dimensions();
  if (ffi::Error e = check_dims("bitnet_head_float_cpu", x.dimensions(), td); e.failure()) return e;
  const HeadProblem p{x.typed_data(), table.untyped_data(), out->typed_data(), x.dimensions()[0], td[0], td[1]};
  if (p.m == 0 || p.v == 0) return ffi::Error::Success();
  const int level = isa_level();
  if (table.element_type() == ffi::DataType::BF16) {
    void (*fn)(const HeadProblem&, int64_t, int64_t, const int32_t*) = run_rows<ScalarFloat<uint16_t>, false>;
#if BITNET_X86
    if (level >= kAvx512Vnni) fn = run_rows<FloatAvx512<uint16_t>, false>;
    if (level == kAvx2) fn = run_rows<FloatAvx2<uint16_t>, false>;
#endif
    split_rows(pool, p, 2 * p.d, [fn](const HeadProblem& q, int64_t a, int64_t b) { fn(q, a, b, nullptr); });
  } else if (table.element_type() == ffi::DataType::F32) {
    void (*fn)(const HeadProblem&, int64_t, int64_t, const int32_t*) = run_rows<ScalarFloat<float>, false>;
#if BITNET_X86
    if (level >= kAvx512Vnni) fn = run_rows<FloatAvx512<float>, false>;
    if (level == kAvx2) fn = run_rows<FloatAvx2<float>, false>;
#endif
    split_rows(pool, p, 4 * p.d, [fn](const HeadProblem& q, int64_t a, int64_t b) { fn(q, a, b, nullptr); });
  } else {
    return ffi::Error::InvalidArgument("bitnet_head_float_cpu: the table must be bfloat16 or float32");
  }
  return ffi::Error::Success();
}

ffi::Error HeadInt8Impl(ffi::ThreadPool pool, ffi::Buffer<ffi::S8> x, ffi::Buffer<ffi::S8> table,
                        ffi::ResultBuffer<ffi::S32> out) {
  const auto td = table.dimensions();
  if (ffi::Error e = check_dims("bitnet_head_int8_cpu", x.dimensions(), td); e.failure()) return e;
  const HeadProblem p{x.typed_data(), table.typed_data(), out->typed_data(), x.dimensions()[0], td[0], td[1]};
  if (p.m == 0 || p.v == 0) return ffi::Error::Success();
  std::vector<int32_t> xsum(static_cast<size_t>(p.m), 0);
  for (int64_t m = 0; m < p.m; ++m)
    for (int64_t d = 0; d < p.d; ++d) xsum[m] += x.typed_data()[m * p.d + d];
  void (*fn)(const HeadProblem&, int64_t, int64_t, const int32_t*) = run_rows<ScalarInt8>;
#if BITNET_X86
  const int level = isa_level();
  if (level >= kAvx512Vnni) fn = run_rows<Int8Avx512>;
  if (level == kAvx2) fn = run_rows<Int8Avx2>;
#endif
  const int32_t* xs = xsum.data();
  split_rows(pool, p, p.d, [fn, xs](const HeadProblem& q, int64_t a, int64_t b) { fn(q, a, b, xs); });
  return ffi::Error::Success();
}


// ---------------------------------------------------------------------------------------------
// The screened greedy head: argmax_v (x @ table^T)[m, v] of the exact float head, reading the int8
// screen (codes q in [-127, 127] and a scale s [V] per table row, as quantize_table makes them) instead
// of the float table for all but a few rows.
//
// For a row h of x: h = t1 p1 + t2 p2 + delta (two int8 levels, |delta| <= t2 / 2) and every table row
// E = s q + eta (|eta| <= s / 2). The int8 estimate a = s (t1 p1.q + t2 p2.q) then differs from the
// real h.E by at most s (|h|_1 / 2 + delta_max |q|_1), and the float head's own rounding is bounded by
// gamma |h|_1 max|E| with gamma = (D / 16 + 16) 2^-24, far above the error of its summation. Every row
// whose upper bound reaches the best lower bound is a candidate; the candidates are recomputed with the
// float head's own tile (bit for bit its value, see kFloatSums), and the first maximum wins, as argmax.
// Non-finite input falls back to the full float head.
//
// Screen layout "group16" (pallas_kernels.cpu.pack_screen): table rows in groups of 16, each group
// ceil(D / 4) blocks of 64 bytes; byte 4 r + t of block b is q[16 g + r][4 b + t] (zero past V and D).
// One 64-byte load then feeds a dot product of 4 values into each of 16 int32 lanes, one lane per table
// row, against a broadcast quad of a level of x: no horizontal sums, and each row of x costs two
// instructions per block (the row-major screen reloaded every level of x from L2 for each table row).
// ---------------------------------------------------------------------------------------------

// Up to kScreenRows rows of x share one pass over the codes.
constexpr int kScreenRows = 8;
constexpr int64_t kScreenGroup = 16;  // table rows per group of the screen layout

struct Screen {
  const int8_t* codes;  // [ceil(V / 16), kq * 64]
  const float* scales;
  int64_t v, d, kq;     // kq: blocks per group, ceil(D / 4)
  int rows;  // rows of x in this pass
  const int8_t* p1;  // [rows, 4 kq] the two levels of each row of x (zero past D)
  const int8_t* p2;
  int32_t sum1[kScreenRows], sum2[kScreenRows];  // sums of p1, p2 per row
  double t1[kScreenRows], t2[kScreenRows], l1[kScreenRows], delta[kScreenRows];
  double* lo;  // [rows, V] bounds per table row
  double* hi;
};

inline void screen_bounds(const Screen& s, int j, int64_t v, int32_t i1, int32_t i2, int32_t l) {
  const double sc = s.scales[v];
  const double a = sc * (s.t1[j] * i1 + s.t2[j] * i2);
  const double gamma = (s.d / 16.0 + 16.0) * 0x1p-24;
  const double b = sc * (0.5 * s.l1[j] + s.delta[j] * l) * (1.0 + 0x1p-20) + gamma * s.l1[j] * 128.0 * sc +
                   1e-6 * std::abs(a);
  s.lo[j * s.v + v] = a - b;
  s.hi[j * s.v + v] = a + b;
}

void screen_scalar(const Screen& s, int64_t g_begin, int64_t g_end) {
  for (int64_t g = g_begin; g < g_end; ++g) {
    const int8_t* blk = s.codes + g * s.kq * 64;
    for (int64_t r = 0; r < kScreenGroup && g * kScreenGroup + r < s.v; ++r) {
      int32_t l = 0, i1[kScreenRows] = {}, i2[kScreenRows] = {};
      for (int64_t b = 0; b < s.kq; ++b) {
        for (int t = 0; t < 4; ++t) {
          const int32_t q = blk[b * 64 + 4 * r + t];
          l += q < 0 ? -q : q;
          for (int j = 0; j < s.rows; ++j) {
            i1[j] += q * s.p1[j * 4 * s.kq + 4 * b + t];
            i2[j] += q * s.p2[j * 4 * s.kq + 4 * b + t];
          }
        }
      }
      for (int j = 0; j < s.rows; ++j) screen_bounds(s, j, g * kScreenGroup + r, i1[j], i2[j], l);
    }
  }
}

#if BITNET_X86
// One group of 16 table rows against every row of x (2 * rows + 1 dpbusd chains); codes + 128 as
// unsigned bytes meet the signed levels, and 128 * sum(p) comes off afterwards.
template <int R>
BITNET_TARGET_AVX512 void screen_avx512_rows(const Screen& s, int64_t g_begin, int64_t g_end) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  const __m512i ones = _mm512_set1_epi8(1);
  const int64_t pstride = 4 * s.kq;
  alignas(64) int32_t l[kScreenGroup], i1[R][kScreenGroup], i2[R][kScreenGroup];
  for (int64_t g = g_begin; g < g_end; ++g) {
    __m512i a1[R], a2[R], al = _mm512_setzero_si512();
    for (int j = 0; j < R; ++j) a1[j] = a2[j] = _mm512_setzero_si512();
    const int8_t* blk = s.codes + g * s.kq * 64;
    for (int64_t b = 0; b < s.kq; ++b) {
      const __m512i q = _mm512_loadu_si512(blk + b * 64);
      const __m512i e = _mm512_xor_si512(q, flip);
      al = _mm512_dpbusd_epi32(al, _mm512_abs_epi8(q), ones);
      for (int j = 0; j < R; ++j) {
        a1[j] = _mm512_dpbusd_epi32(a1[j], e, _mm512_set1_epi32(load_quad(s.p1 + j * pstride + 4 * b)));
        a2[j] = _mm512_dpbusd_epi32(a2[j], e, _mm512_set1_epi32(load_quad(s.p2 + j * pstride + 4 * b)));
      }
    }
    _mm512_store_si512(l, al);
    for (int j = 0; j < R; ++j) {
      _mm512_store_si512(i1[j], a1[j]);
      _mm512_store_si512(i2[j], a2[j]);
    }
    const int64_t rows = std::min<int64_t>(kScreenGroup, s.v - g * kScreenGroup);
    for (int j = 0; j < R; ++j) {
      for (int64_t r = 0; r < rows; ++r) {
        screen_bounds(s, j, g * kScreenGroup + r, i1[j][r] - 128 * s.sum1[j], i2[j][r] - 128 * s.sum2[j], l[r]);
      }
    }
  }
}

void screen_avx512(const Screen& s, int64_t g_begin, int64_t g_end) {
  switch (s.rows) {
    case 1: return screen_avx512_rows<1>(s, g_begin, g_end);
    case 2: return screen_avx512_rows<2>(s, g_begin, g_end);
    case 3: return screen_avx512_rows<3>(s, g_begin, g_end);
    case 4: return screen_avx512_rows<4>(s, g_begin, g_end);
    case 5: return screen_avx512_rows<5>(s, g_begin, g_end);
    case 6: return screen_avx512_rows<6>(s, g_begin, g_end);
    case 7: return screen_avx512_rows<7>(s, g_begin, g_end);
    default: return screen_avx512_rows<8>(s, g_begin, g_end);
  }
}
#endif

// Index of the first maximum of vals[0, n) (NaN counts as the maximum, as jnp.argmax).
int32_t first_max(const float* vals, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(vals[i])) return static_cast<int32_t>(i);
    if (vals[i] > vals[best]) best = i;
  }
  return static_cast<int32_t>(best);
}

ffi::Error HeadGreedyImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::AnyBuffer table,
                          ffi::Buffer<ffi::S8> codes, ffi::Buffer<ffi::F32> scales,
                          ffi::ResultBuffer<ffi::S32> tokens, ffi::ResultBuffer<ffi::S32> rescored) {
  const auto td = table.dimensions();
  if (ffi::Error e = check_dims("bitnet_head_greedy_cpu", x.dimensions(), td); e.failure()) return e;
  const auto cd = codes.dimensions();
  const int64_t m_rows = x.dimensions()[0], v_rows = td[0], d = td[1];
  const int64_t groups = (v_rows + kScreenGroup - 1) / kScreenGroup, kq = (d + 3) / 4;
  if (cd.size() != 2 || cd[0] != groups || cd[1] != kq * 64 || scales.dimensions().size() != 1 ||
      scales.dimensions()[0] != v_rows) {
    return ffi::Error::InvalidArgument(
        "bitnet_head_greedy_cpu: expected screen codes [ceil(V/16), ceil(D/4)*64] (group16 layout) and scales [V]");
  }
  if (v_rows == 0) return ffi::Error::InvalidArgument("bitnet_head_greedy_cpu: the table has no rows");
  const bool bf16 = table.element_type() == ffi::DataType::BF16;
  if (!bf16 && table.element_type() != ffi::DataType::F32) {
    return ffi::Error::InvalidArgument("bitnet_head_greedy_cpu: the table must be bfloat16 or float32");
  }
  const int level = isa_level();
  // the float head's per-row tile (one table row, one row of x) at this level
  void (*row_fn)(const HeadProblem&, int64_t, int64_t, const int32_t*) =
      bf16 ? &ScalarFloat<uint16_t>::tile<1, 1> : &ScalarFloat<float>::tile<1, 1>;
  void (*screen_fn)(const Screen&, int64_t, int64_t) = screen_scalar;
#if BITNET_X86
  if (level >= kAvx512Vnni) {
    row_fn = bf16 ? &FloatAvx512<uint16_t>::tile<1, 1> : &FloatAvx512<float>::tile<1, 1>;
    screen_fn = screen_avx512;
  }
  if (level == kAvx2) row_fn = bf16 ? &FloatAvx2<uint16_t>::tile<1, 1> : &FloatAvx2<float>::tile<1, 1>;
#endif
  const int64_t threads = thread_count(pool);
  // Scratch kept between calls by the calling thread (every element read is written first in the call):
  // the bounds alone are 16 bytes per table row and row of x, and fresh zeroed buffers of that size
  // cost page faults on every decoded token.
  struct Scratch {
    std::vector<double> lo, hi;
    std::vector<float> exact, resid;
    std::vector<int8_t> p1, p2;
  };
  thread_local Scratch scratch;
  const int64_t pass_rows = std::min<int64_t>(kScreenRows, m_rows), pstride = 4 * kq;
  const auto at_least = [](auto& buf, int64_t n) {
    if (buf.size() < static_cast<size_t>(n)) buf.resize(static_cast<size_t>(n));
    return buf.data();
  };
  double* lo = at_least(scratch.lo, pass_rows * v_rows);
  double* hi = at_least(scratch.hi, pass_rows * v_rows);
  float* exact = at_least(scratch.exact, v_rows);
  float* resid = at_least(scratch.resid, d);
  int8_t* p1 = at_least(scratch.p1, pass_rows * pstride);
  int8_t* p2 = at_least(scratch.p2, pass_rows * pstride);
  for (int64_t m0 = 0; m0 < m_rows; m0 += kScreenRows) {
    Screen s{codes.typed_data(), scales.typed_data(), v_rows, d, kq, 0, p1, p2, {}, {}, {}, {}, {}, {}, lo, hi};
    bool screened[kScreenRows] = {};
    const int rows = static_cast<int>(std::min<int64_t>(kScreenRows, m_rows - m0));
    for (int j = 0; j < rows; ++j) {  // the two int8 levels of each row of x; non-finite or zero rows go in full
      const float* h = x.typed_data() + (m0 + j) * d;
      double l1 = 0.0;
      float amax = 0.f;
      for (int64_t k = 0; k < d; ++k) {
        l1 += std::abs(static_cast<double>(h[k]));
        amax = std::max(amax, std::abs(h[k]));
      }
      screened[j] = std::isfinite(l1) && amax > 0.f;
      const int r = s.rows;
      if (!screened[j]) continue;
      s.l1[r] = l1;
      s.t1[r] = amax / 127.0;
      const float t1 = static_cast<float>(s.t1[r]);
      float rmax = 0.f;
      for (int64_t k = 0; k < d; ++k) {
        const float c = std::min(127.f, std::max(-127.f, std::nearbyint(h[k] / t1)));
        p1[r * pstride + k] = static_cast<int8_t>(c);
        s.sum1[r] += p1[r * pstride + k];
        resid[k] = static_cast<float>(static_cast<double>(h[k]) - s.t1[r] * c);
        rmax = std::max(rmax, std::abs(resid[k]));
      }
      s.t2[r] = rmax / 127.0;
      for (int64_t k = 0; k < d; ++k) {
        const float c = rmax > 0.f ? std::min(127.f, std::max(-127.f, std::nearbyint(static_cast<float>(resid[k] / s.t2[r])))) : 0.f;
        p2[r * pstride + k] = static_cast<int8_t>(c);
        s.sum2[r] += p2[r * pstride + k];
      }
      std::fill(p1 + r * pstride + d, p1 + (r + 1) * pstride, int8_t{0});  // the last quad's padding
      std::fill(p2 + r * pstride + d, p2 + (r + 1) * pstride, int8_t{0});
      // |h - t1 p1 - t2 p2| per element: half a level of t2, plus the rounding of the residual
      s.delta[r] = 0.5 * s.t2[r] * (1.0 + 0x1p-20) + 0x1p-22 * amax;
      ++s.rows;
    }
    if (s.rows > 0) {
      const int64_t per = chunk_size(groups, threads, 64, 1);
      const int64_t chunks = (groups + per - 1) / per;
      parallel_chunks(pool, chunks, threads, [&s, per, groups, screen_fn](int64_t c) {
        screen_fn(s, c * per, std::min(groups, (c + 1) * per));
      });
    }
    for (int j = 0, r = 0; j < rows; ++j) {
      const int64_t m = m0 + j;
      const HeadProblem row{x.typed_data() + m * d, table.untyped_data(), exact, 1, v_rows, d};
      int64_t count = v_rows;
      int32_t best = 0;
      bool full = !screened[j];
      if (screened[j]) {
        const double* row_lo = lo + r * v_rows;
        const double* row_hi = hi + r * v_rows;
        ++r;
        double threshold = -INFINITY;
        bool finite = true;
        for (int64_t v = 0; v < v_rows; ++v) {
          finite = finite && std::isfinite(row_lo[v]) && std::isfinite(row_hi[v]);
          threshold = std::max(threshold, row_lo[v]);
        }
        full = !finite;
        count = 0;
        bool found = false;
        float best_val = 0.f;
        for (int64_t v = 0; finite && v < v_rows; ++v) {
          if (row_hi[v] < threshold) continue;
          row_fn(row, v, 0, nullptr);  // the float head's own value for this row
          ++count;
          if (std::isnan(exact[v])) {  // finite bounds rule this out; the full head decides if it happens
            full = true;
            break;
          }
          if (!found || exact[v] > best_val) {
            best = static_cast<int32_t>(v);
            best_val = exact[v];
            found = true;
          }
        }
      }
      if (full) {
        const int64_t per = chunk_size(v_rows, threads, 65536 / std::max<int64_t>(1, (bf16 ? 2 : 4) * d) + 1, 1);
        const int64_t chunks = (v_rows + per - 1) / per;
        parallel_chunks(pool, chunks, threads, [&row, per, v_rows, row_fn](int64_t c) {
          for (int64_t v = c * per; v < std::min(v_rows, (c + 1) * per); ++v) row_fn(row, v, 0, nullptr);
        });
        best = first_max(exact, v_rows);
        count = v_rows;
      }
      tokens->typed_data()[m] = best;
      rescored->typed_data()[m] = static_cast<int32_t>(count);
    }
  }
  return ffi::Error::Success();
}

}  // namespace
}  // namespace bitnet

XLA_FFI_DEFINE_HANDLER_SYMBOL(BitnetHeadFloatCpu, bitnet::HeadFloatImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Arg<xla::ffi::AnyBuffer>()
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(BitnetHeadGreedyCpu, bitnet::HeadGreedyImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Arg<xla::ffi::AnyBuffer>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::S8>>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Ret<xla::ffi::Buffer<xla::ffi::S32>>()
                                  .Ret<xla::ffi::Buffer<xla::ffi::S32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(BitnetHeadInt8Cpu, bitnet::HeadInt8Impl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::S8>>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::S8>>()
                                  .Ret<xla::ffi::Buffer<xla::ffi::S32>>());
