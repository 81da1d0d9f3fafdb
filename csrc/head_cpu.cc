// The output projection ("head") for CPUs, as XLA FFI custom calls: logits = x @ table^T.
//
// bitnet_head_float_cpu: float32 x [M, D] times a bfloat16 or float32 table [V, D] -> float32 [M, V],
//   accumulated in float32 (the exact head: the table's values as stored, no quantization).
// bitnet_head_int8_cpu: int8 x [M, D] times an int8 table [V, D] whose values lie in [-127, 127]
//   -> exact int32 [M, V] (the quantized head; the caller applies the per-row and per-token scales).
//
// The table is read row-major, so the same array serves the embedding lookup. Rows are split into
// contiguous chunks over XLA's intra-op thread pool; each chunk streams its rows once per 4 rows of x.

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

// With few outputs per tile, each keeps S partial sums over consecutive vectors (independent chains).
template <typename T, int RV, int MB>
BITNET_TARGET_AVX512 void float_tile_avx512(const HeadProblem& p, int64_t v0, int64_t m0, const int32_t*) {
  constexpr int S = RV * MB >= 4 ? 1 : 4 / (RV * MB);
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
  constexpr int S = RV * MB >= 4 ? 1 : 4 / (RV * MB);
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

// Four table rows per tile share each load of x when there are several rows of x; with few (decode)
// the head is bound by memory and one row at a time streams faster (as in ternary_cpu.cc).
template <typename K>
void run_rows(const HeadProblem& p, int64_t v_begin, int64_t v_end, const int32_t* xsum) {
  int64_t v = v_begin;
  if (p.m >= 4) {
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
    void (*fn)(const HeadProblem&, int64_t, int64_t, const int32_t*) = run_rows<ScalarFloat<uint16_t>>;
#if BITNET_X86
    if (level >= kAvx512Vnni) fn = run_rows<FloatAvx512<uint16_t>>;
    if (level == kAvx2) fn = run_rows<FloatAvx2<uint16_t>>;
#endif
    split_rows(pool, p, 2 * p.d, [fn](const HeadProblem& q, int64_t a, int64_t b) { fn(q, a, b, nullptr); });
  } else if (table.element_type() == ffi::DataType::F32) {
    void (*fn)(const HeadProblem&, int64_t, int64_t, const int32_t*) = run_rows<ScalarFloat<float>>;
#if BITNET_X86
    if (level >= kAvx512Vnni) fn = run_rows<FloatAvx512<float>>;
    if (level == kAvx2) fn = run_rows<FloatAvx2<float>>;
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

}  // namespace
}  // namespace bitnet

XLA_FFI_DEFINE_HANDLER_SYMBOL(BitnetHeadFloatCpu, bitnet::HeadFloatImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Arg<xla::ffi::AnyBuffer>()
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(BitnetHeadInt8Cpu, bitnet::HeadInt8Impl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::S8>>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::S8>>()
                                  .Ret<xla::ffi::Buffer<xla::ffi::S32>>());
