// Packed ternary (2-bit) x int8 -> int32 matrix multiplication for CPUs, as an XLA FFI custom call.
//
// Weight layout "tile16" (see pallas_kernels/layout.py): output rows are grouped 16 at a time and
// the reduction axis K is padded to Kp = ceil(K / 16) * 16. A full group is Kp / 16 blocks of 64
// bytes, one block per 16 consecutive k: byte 4 * r + s of block b holds, in bits 2i+1:2i, the code
// (w + 1) of row r of the group at k = 16 b + 4 i + s. The last group may hold fewer than 16 rows;
// its blocks are then 4 * rows bytes long. One group is one sequential stream of bytes.
//
// With codes c = w + 1 in {0, 1, 2} (unsigned) and x signed, sum_k w x = sum_k c x - sum_k x, so the
// u8 x s8 dot-product instructions (AVX-512 VNNI vpdpbusd, AVX2 vpmaddubsw) accumulate the 16 rows of
// a group in 16 int32 lanes directly, with no horizontal reduction. The result is exact.
//
// Four code paths (AMX, AVX-512 VNNI, AVX2, scalar) live in one binary, each compiled with its own
// target attributes; the widest one the running CPU supports is chosen at run time (module.cc; set_isa
// forces one for tests). Work is split over XLA's intra-op thread pool (ffi::ThreadPool); the calling
// thread works too and can finish all chunks alone, so a busy or absent pool never deadlocks.

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common.h"

namespace bitnet {
namespace {

constexpr int64_t kGroup = 16;      // output rows per group
constexpr int64_t kBlockK = 16;     // k values per block
constexpr int64_t kBlockBytes = 64;  // bytes per block of a full group

// Everything one call needs (read by every chunk).
struct Problem {
  const int8_t* x;       // padded activations [M, xstride] (zeros past K)
  const int32_t* xsum;   // per-row sums of x [M] (not computed for the AMX path)
  const uint8_t* w;      // packed weights
  int32_t* out;          // [M, N]
  int64_t m, n, kp;      // kp: K rounded up to 16, the weights' reduction length
  int64_t xstride;       // elements per row of x: kp, or kp rounded up to 64 for the AMX path
};

using GroupsFn = void (*)(const Problem&, int64_t g_begin, int64_t g_end);

// ---------------------------------------------------------------------------------------------
// Portable scalar path.
// ---------------------------------------------------------------------------------------------

void groups_scalar(const Problem& p, int64_t g_begin, int64_t g_end) {
  const int64_t nblocks = p.kp / kBlockK;
  for (int64_t g = g_begin; g < g_end; ++g) {
    const int64_t n0 = g * kGroup;
    const int64_t rows = std::min(kGroup, p.n - n0);
    const uint8_t* wg = p.w + n0 * (p.kp / 4);  // a group's stream starts at row n0's share
    const int64_t block_bytes = 4 * rows;
    for (int64_t m = 0; m < p.m; ++m) {
      const int8_t* xm = p.x + m * p.xstride;
      for (int64_t r = 0; r < rows; ++r) {
        int32_t acc = 0;
        for (int64_t b = 0; b < nblocks; ++b) {
          const uint8_t* blk = wg + b * block_bytes + 4 * r;
          for (int s = 0; s < 4; ++s) {
            for (int i = 0; i < 4; ++i) {
              acc += static_cast<int32_t>((blk[s] >> (2 * i)) & 3) * xm[b * kBlockK + 4 * i + s];
            }
          }
        }
        p.out[m * p.n + n0 + r] = acc - p.xsum[m];
      }
    }
  }
}

#if BITNET_X86

// Copies a partial last group (rows < 16) into a full-size zero-padded stream, so the SIMD tiles
// can treat it like any other group (its extra rows are computed and never stored).
std::vector<uint8_t> pad_partial_group(const Problem& p, int64_t g) {
  const int64_t n0 = g * kGroup;
  const int64_t rows = p.n - n0;
  const int64_t nblocks = p.kp / kBlockK;
  std::vector<uint8_t> buf(nblocks * kBlockBytes, 0);
  const uint8_t* src = p.w + n0 * (p.kp / 4);
  for (int64_t b = 0; b < nblocks; ++b) {
    std::memcpy(buf.data() + b * kBlockBytes, src + b * 4 * rows, 4 * rows);
  }
  return buf;
}

// ---------------------------------------------------------------------------------------------
// AVX-512 VNNI path: one zmm = one block of one group (16 rows x 4 k per unpacked plane).
// ---------------------------------------------------------------------------------------------

// RG groups (streams w[0..RG) with stride group_bytes) times MB rows of x starting at row m0. With
// few rows of x, each output keeps S partial sums (one per plane i mod S) so that consecutive
// vpdpbusd do not wait on each other; they are added at the end.
template <int RG, int MB>
BITNET_TARGET_AVX512 void tile_avx512(const Problem& p, const uint8_t* wg, int64_t group_bytes, int64_t n0,
                                      int64_t m0, int64_t valid_rows) {
  constexpr int S = MB == 1 ? 4 : (MB == 2 ? 2 : 1);
  const __m512i three = _mm512_set1_epi8(3);
  __m512i acc[RG][MB][S];
  for (int r = 0; r < RG; ++r)
    for (int j = 0; j < MB; ++j)
      for (int t = 0; t < S; ++t) acc[r][j][t] = _mm512_setzero_si512();
  const int64_t nblocks = p.kp / kBlockK;
  const int8_t* x0 = p.x + m0 * p.xstride;
  for (int64_t b = 0; b < nblocks; ++b) {
    __m512i u[RG][4];
    for (int r = 0; r < RG; ++r) {
      const __m512i v = _mm512_loadu_si512(wg + r * group_bytes + b * kBlockBytes);
      u[r][0] = _mm512_and_si512(v, three);
      u[r][1] = _mm512_and_si512(_mm512_srli_epi16(v, 2), three);
      u[r][2] = _mm512_and_si512(_mm512_srli_epi16(v, 4), three);
      u[r][3] = _mm512_and_si512(_mm512_srli_epi16(v, 6), three);
    }
    for (int j = 0; j < MB; ++j) {
      const int8_t* xb = x0 + j * p.xstride + b * kBlockK;
      for (int i = 0; i < 4; ++i) {
        const __m512i xq = _mm512_set1_epi32(load_quad(xb + 4 * i));
        for (int r = 0; r < RG; ++r) acc[r][j][i % S] = _mm512_dpbusd_epi32(acc[r][j][i % S], u[r][i], xq);
      }
    }
  }
  const __mmask16 mask = static_cast<__mmask16>((1u << valid_rows) - 1u);
  for (int j = 0; j < MB; ++j) {
    const __m512i s = _mm512_set1_epi32(p.xsum[m0 + j]);
    int32_t* o = p.out + (m0 + j) * p.n + n0;
    for (int r = 0; r < RG; ++r) {
      __m512i total = acc[r][j][0];
      for (int t = 1; t < S; ++t) total = _mm512_add_epi32(total, acc[r][j][t]);
      const __m512i res = _mm512_sub_epi32(total, s);
      if (valid_rows == kGroup) {
        _mm512_storeu_si512(o + r * kGroup, res);
      } else {
        _mm512_mask_storeu_epi32(o + r * kGroup, mask, res);
      }
    }
  }
}

// All rows of x for RG groups: large tiles of x rows first, then the remainder.
template <int RG>
BITNET_TARGET_AVX512 void rows_avx512(const Problem& p, const uint8_t* wg, int64_t group_bytes, int64_t n0,
                               int64_t valid_rows) {
  int64_t m0 = 0;
  for (; m0 + 8 <= p.m; m0 += 8) tile_avx512<RG, 8>(p, wg, group_bytes, n0, m0, valid_rows);
  for (; m0 + 4 <= p.m; m0 += 4) tile_avx512<RG, 4>(p, wg, group_bytes, n0, m0, valid_rows);
  for (; m0 + 2 <= p.m; m0 += 2) tile_avx512<RG, 2>(p, wg, group_bytes, n0, m0, valid_rows);
  for (; m0 < p.m; ++m0) tile_avx512<RG, 1>(p, wg, group_bytes, n0, m0, valid_rows);
}

BITNET_TARGET_AVX512 void groups_avx512(const Problem& p, int64_t g_begin, int64_t g_end) {
  const int64_t group_bytes = kGroup * p.kp / 4;
  const int64_t full_end = std::min(g_end, p.n / kGroup);
  int64_t g = g_begin;
  // Two groups per tile share each broadcast of x, which pays off when there are many rows of x
  // (prefill); with few rows (decode) the kernel is bound by memory, and one sequential stream at a
  // time reads faster than two interleaved ones (measured: ~2.5x on Zen 5).
  if (p.m >= 8) {
    for (; g + 2 <= full_end; g += 2) rows_avx512<2>(p, p.w + g * group_bytes, group_bytes, g * kGroup, kGroup);
  }
  for (; g < full_end; ++g) rows_avx512<1>(p, p.w + g * group_bytes, group_bytes, g * kGroup, kGroup);
  if (g < g_end) {  // the partial last group
    const std::vector<uint8_t> buf = pad_partial_group(p, g);
    rows_avx512<1>(p, buf.data(), group_bytes, g * kGroup, p.n - g * kGroup);
  }
}

// ---------------------------------------------------------------------------------------------
// AMX path (Intel AMX-INT8): 16 x 16 int32 output tiles from 16 x 64 int8 tiles of x and 16 x 64
// byte tiles of codes. Unpacked plane i of block b of a group is exactly one row of an AMX B tile
// (byte 4 r + s: column r, k = 16 b + 4 i + s), so a group's codes unpack to a run of 64-byte rows
// in block-plane order, and K step t (k in [64 t, 64 t + 64)) is rows [16 t, 16 t + 16) of that run.
// The codes unpack to signed weights (c - 1) and tdpbssd multiplies them by x: no row sums needed.
// With few rows of x the tiles are mostly empty, so small M takes the AVX-512 VNNI path.
// ---------------------------------------------------------------------------------------------

constexpr int64_t kAmxMinRows = 16;  // fewer rows of x than this run the VNNI tiles instead
constexpr int64_t kAmxK = 64;        // k per AMX step

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Unpacks one group's codes (a full 16-row stream of nblocks blocks) into ksteps * 16 rows of 64
// signed weights w = c - 1, zero past the last block.
BITNET_TARGET_AMX void unpack_group_amx(const uint8_t* wg, int64_t nblocks, int64_t ksteps, int8_t* dst) {
  const __m512i three = _mm512_set1_epi8(3);
  const __m512i one = _mm512_set1_epi8(1);
  for (int64_t b = 0; b < nblocks; ++b) {
    const __m512i v = _mm512_loadu_si512(wg + b * kBlockBytes);
    int8_t* d = dst + 4 * b * kBlockBytes;
    _mm512_store_si512(d, _mm512_sub_epi8(_mm512_and_si512(v, three), one));
    _mm512_store_si512(d + 64, _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(v, 2), three), one));
    _mm512_store_si512(d + 128, _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(v, 4), three), one));
    _mm512_store_si512(d + 192, _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(v, 6), three), one));
  }
  std::memset(dst + 4 * nblocks * kBlockBytes, 0, static_cast<size_t>((16 * ksteps - 4 * nblocks) * kBlockBytes));
}

// Stores accumulator tile `t` at rows m0.., columns n0.. of the output, within M and valid_cols.
#define BITNET_STORE_TILE(t, m0, n0, valid_cols)                                                       \
  do {                                                                                                 \
    const int64_t rows_ = std::min<int64_t>(16, p.m - (m0));                                           \
    if ((valid_cols) == 16 && rows_ == 16) {                                                           \
      _tile_stored(t, p.out + (m0) * p.n + (n0), p.n * 4);                                             \
    } else {                                                                                           \
      _tile_stored(t, tile, 64);                                                                       \
      for (int64_t r_ = 0; r_ < rows_; ++r_)                                                           \
        std::memcpy(p.out + ((m0) + r_) * p.n + (n0), tile + 16 * r_, sizeof(int32_t) * (valid_cols)); \
    }                                                                                                  \
  } while (0)

// Groups [g_begin, g_end), two at a time: both groups' codes are unpacked once (for the whole K) and
// then serve every 32-row slice of x. Tiles: 0-3 accumulators (rows i, groups j at 2 i + j), 4-5 x,
// 6-7 codes. x has xstride = K rounded up to 64 and rows padded with zeros to a multiple of 16.
BITNET_TARGET_AMX void groups_amx(const Problem& p, int64_t g_begin, int64_t g_end) {
  if (p.m < kAmxMinRows) return groups_avx512(p, g_begin, g_end);
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
  const int64_t nblocks = p.kp / kBlockK;
  const int64_t ksteps = p.xstride / kAmxK;
  const int64_t group_bytes = kGroup * p.kp / 4;
  const int64_t unpacked_bytes = ksteps * 16 * 64;
  // Two groups' unpacked codes, 64-byte aligned.
  // Per-thread scratch for two groups' unpacked codes, kept between calls (XLA's pool threads live as
  // long as the process): a fresh buffer per call would be a fresh mmap and page faults.
  thread_local std::vector<int8_t> scratch;
  if (scratch.size() < static_cast<size_t>(2 * unpacked_bytes + 64)) scratch.resize(2 * unpacked_bytes + 64);
  int8_t* b0 = reinterpret_cast<int8_t*>((reinterpret_cast<uintptr_t>(scratch.data()) + 63) & ~uintptr_t{63});
  int8_t* b1 = b0 + unpacked_bytes;
  alignas(64) int32_t tile[256];
  const int64_t xs = p.xstride;
  const int64_t full_end = std::min(g_end, p.n / kGroup);
  std::vector<uint8_t> partial;
  for (int64_t g = g_begin; g < g_end; g += 2) {
    // One or two groups; a partial last group is padded to a full stream first.
    const int64_t count = std::min<int64_t>(2, g_end - g);
    for (int64_t j = 0; j < count; ++j) {
      const uint8_t* src = p.w + (g + j) * group_bytes;
      if (g + j >= full_end) {
        partial = pad_partial_group(p, g + j);
        src = partial.data();
      }
      unpack_group_amx(src, nblocks, ksteps, j == 0 ? b0 : b1);
    }
    const int64_t cols0 = std::min(kGroup, p.n - g * kGroup);
    const int64_t cols1 = count == 2 ? std::min(kGroup, p.n - (g + 1) * kGroup) : 0;
    for (int64_t m0 = 0; m0 < p.m; m0 += 32) {
      const bool two_rows = m0 + 16 < p.m;
      const int8_t* x0 = p.x + m0 * xs;
      const int8_t* x1 = x0 + 16 * xs;
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int64_t t = 0; t < ksteps; ++t) {
        _tile_loadd(4, x0 + t * kAmxK, xs);
        _tile_loadd(6, b0 + t * 1024, 64);
        _tile_dpbssd(0, 4, 6);
        if (count == 2) {
          _tile_loadd(7, b1 + t * 1024, 64);
          _tile_dpbssd(1, 4, 7);
        }
        if (two_rows) {
          _tile_loadd(5, x1 + t * kAmxK, xs);
          _tile_dpbssd(2, 5, 6);
          if (count == 2) _tile_dpbssd(3, 5, 7);
        }
      }
      BITNET_STORE_TILE(0, m0, g * kGroup, cols0);
      if (count == 2) BITNET_STORE_TILE(1, m0, (g + 1) * kGroup, cols1);
      if (two_rows) {
        BITNET_STORE_TILE(2, m0 + 16, g * kGroup, cols0);
        if (count == 2) BITNET_STORE_TILE(3, m0 + 16, (g + 1) * kGroup, cols1);
      }
    }
  }
#undef BITNET_STORE_TILE
  _tile_release();
}

// ---------------------------------------------------------------------------------------------
// AVX2 path: one ymm = half a block (8 rows); vpmaddubsw + vpmaddwd instead of vpdpbusd.
// Per block an int16 lane sums 8 products of magnitude <= 256, so it cannot saturate.
// ---------------------------------------------------------------------------------------------

template <int MB>
BITNET_TARGET_AVX2 void tile_avx2(const Problem& p, const uint8_t* wg, int64_t n0, int64_t m0, int64_t valid_rows) {
  const __m256i three = _mm256_set1_epi8(3);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[2][MB];
  for (int h = 0; h < 2; ++h)
    for (int j = 0; j < MB; ++j) acc[h][j] = _mm256_setzero_si256();
  const int64_t nblocks = p.kp / kBlockK;
  const int8_t* x0 = p.x + m0 * p.xstride;
  for (int64_t b = 0; b < nblocks; ++b) {
    __m256i u[2][4];
    for (int h = 0; h < 2; ++h) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wg + b * kBlockBytes + 32 * h));
      u[h][0] = _mm256_and_si256(v, three);
      u[h][1] = _mm256_and_si256(_mm256_srli_epi16(v, 2), three);
      u[h][2] = _mm256_and_si256(_mm256_srli_epi16(v, 4), three);
      u[h][3] = _mm256_and_si256(_mm256_srli_epi16(v, 6), three);
    }
    for (int j = 0; j < MB; ++j) {
      const int8_t* xb = x0 + j * p.xstride + b * kBlockK;
      __m256i xq[4];
      for (int i = 0; i < 4; ++i) xq[i] = _mm256_set1_epi32(load_quad(xb + 4 * i));
      for (int h = 0; h < 2; ++h) {
        __m256i s16 = _mm256_maddubs_epi16(u[h][0], xq[0]);
        for (int i = 1; i < 4; ++i) s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(u[h][i], xq[i]));
        acc[h][j] = _mm256_add_epi32(acc[h][j], _mm256_madd_epi16(s16, ones));
      }
    }
  }
  for (int j = 0; j < MB; ++j) {
    const __m256i s = _mm256_set1_epi32(p.xsum[m0 + j]);
    int32_t* o = p.out + (m0 + j) * p.n + n0;
    for (int h = 0; h < 2; ++h) {
      const __m256i res = _mm256_sub_epi32(acc[h][j], s);
      if (valid_rows == kGroup) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 8 * h), res);
      } else {
        alignas(32) int32_t tmp[8];
        _mm256_store_si256(reinterpret_cast<__m256i*>(tmp), res);
        for (int64_t l = 0; l < 8; ++l) {
          if (8 * h + l < valid_rows) o[8 * h + l] = tmp[l];
        }
      }
    }
  }
}

BITNET_TARGET_AVX2 void rows_avx2(const Problem& p, const uint8_t* wg, int64_t n0, int64_t valid_rows) {
  int64_t m0 = 0;
  for (; m0 + 4 <= p.m; m0 += 4) tile_avx2<4>(p, wg, n0, m0, valid_rows);
  for (; m0 + 2 <= p.m; m0 += 2) tile_avx2<2>(p, wg, n0, m0, valid_rows);
  for (; m0 < p.m; ++m0) tile_avx2<1>(p, wg, n0, m0, valid_rows);
}

BITNET_TARGET_AVX2 void groups_avx2(const Problem& p, int64_t g_begin, int64_t g_end) {
  const int64_t group_bytes = kGroup * p.kp / 4;
  const int64_t full_end = std::min(g_end, p.n / kGroup);
  int64_t g = g_begin;
  for (; g < full_end; ++g) rows_avx2(p, p.w + g * group_bytes, g * kGroup, kGroup);
  if (g < g_end) {
    const std::vector<uint8_t> buf = pad_partial_group(p, g);
    rows_avx2(p, buf.data(), g * kGroup, p.n - g * kGroup);
  }
}

#endif  // BITNET_X86

// ---------------------------------------------------------------------------------------------
// The FFI handler.
// ---------------------------------------------------------------------------------------------

GroupsFn groups_fn(int level) {
#if BITNET_X86
  if (level == kAmx) return groups_amx;
  if (level == kAvx512Vnni) return groups_avx512;
  if (level == kAvx2) return groups_avx2;
#endif
  return groups_scalar;
}

// out [M, N] = x [M, K] (int8) times the tile16-packed weights starting at w (N rows).
ffi::Error run_matmul(ffi::ThreadPool pool, const int8_t* xs, int64_t m, int64_t k, const uint8_t* w, int64_t n,
                      int32_t* o) {
  if (m == 0 || n == 0) return ffi::Error::Success();
  if (k == 0) {
    std::fill(o, o + m * n, 0);
    return ffi::Error::Success();
  }
  const int64_t kp = (k + kBlockK - 1) / kBlockK * kBlockK;
  const int level = isa_level();
  const bool amx = level == kAmx && m >= kAmxMinRows;
  // Zero-padded copy of x (so every block, or AMX tile, reads valid bytes) and the per-row sums.
  const int64_t xstride = amx ? (kp + kAmxK - 1) / kAmxK * kAmxK : kp;
  const int64_t mrows = amx ? (m + 15) / 16 * 16 : m;
  std::vector<int8_t> xpad(static_cast<size_t>(mrows * xstride), 0);
  std::vector<int32_t> xsum(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i) {
    std::memcpy(xpad.data() + i * xstride, xs + i * k, static_cast<size_t>(k));
    if (amx) continue;  // the AMX tiles multiply by signed weights: no row sums
    int32_t s = 0;
    for (int64_t j = 0; j < k; ++j) s += xs[i * k + j];
    xsum[i] = s;
  }
  const Problem problem{xpad.data(), xsum.data(), w, o, m, n, kp, xstride};
  const GroupsFn fn = groups_fn(level);
  const int64_t num_groups = (n + kGroup - 1) / kGroup;
  // At least ~64 KiB of weights per chunk keeps scheduling cheap; even sizes keep 2-group tiles whole.
  const int64_t group_bytes = kGroup * kp / 4;
  const int64_t threads = thread_count(pool);
  const int64_t per = chunk_size(num_groups, threads, 65536 / group_bytes + 1, 2);
  const int64_t chunks = (num_groups + per - 1) / per;
  parallel_chunks(pool, chunks, threads, [&problem, fn, per, num_groups](int64_t c) {
    fn(problem, c * per, std::min(num_groups, (c + 1) * per));
  });
  return ffi::Error::Success();
}

// Checks that rows of `bytes_per_row` bytes fit K (tile16: ceil(K/16)*4 bytes per row).
ffi::Error check_row_bytes(int64_t bytes_per_row, int64_t k) {
  const int64_t kp = (k + kBlockK - 1) / kBlockK * kBlockK;
  if (bytes_per_row != kp / 4) {
    return ffi::Error::InvalidArgument(
        "bitnet_ternary_matmul_cpu: packed weights have " + std::to_string(bytes_per_row) +
        " bytes per row, expected ceil(K/16)*4 = " + std::to_string(kp / 4) + " for K=" + std::to_string(k));
  }
  return ffi::Error::Success();
}

ffi::Error TernaryMatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S8> x, ffi::Buffer<ffi::U8> w,
                             ffi::ResultBuffer<ffi::S32> out) {
  const auto xd = x.dimensions();
  const auto wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 2) {
    return ffi::Error::InvalidArgument("bitnet_ternary_matmul_cpu: x and packed weights must be 2-D");
  }
  if (ffi::Error e = check_row_bytes(wd[1], xd[1]); e.failure()) return e;
  return run_matmul(pool, x.typed_data(), xd[0], xd[1], w.typed_data(), wd[0], out->typed_data());
}

// The same product with one layer's weights taken, in place, from a stack [L, N, bytes per row]: a
// layer loop (lax.scan) hands over the whole stack and the layer index instead of a sliced copy.
ffi::Error TernaryMatmulStackedImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S8> x, ffi::Buffer<ffi::U8> stack,
                                    ffi::Buffer<ffi::S32> layer, ffi::ResultBuffer<ffi::S32> out) {
  const auto xd = x.dimensions();
  const auto sd = stack.dimensions();
  if (xd.size() != 2 || sd.size() != 3 || layer.element_count() != 1) {
    return ffi::Error::InvalidArgument(
        "bitnet_ternary_matmul_stacked_cpu: x must be 2-D, the stack 3-D and the layer index a scalar");
  }
  if (ffi::Error e = check_row_bytes(sd[2], xd[1]); e.failure()) return e;
  const int64_t index = layer.typed_data()[0];
  if (index < 0 || index >= sd[0]) {
    return ffi::Error::InvalidArgument("bitnet_ternary_matmul_stacked_cpu: layer index " + std::to_string(index) +
                                       " outside a stack of " + std::to_string(sd[0]) + " layers");
  }
  const uint8_t* w = stack.typed_data() + index * sd[1] * sd[2];
  return run_matmul(pool, x.typed_data(), xd[0], xd[1], w, sd[1], out->typed_data());
}

}  // namespace
}  // namespace bitnet

XLA_FFI_DEFINE_HANDLER_SYMBOL(BitnetTernaryMatmulCpu, bitnet::TernaryMatmulImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::S8>>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::U8>>()
                                  .Ret<xla::ffi::Buffer<xla::ffi::S32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(BitnetTernaryMatmulStackedCpu, bitnet::TernaryMatmulStackedImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::S8>>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::U8>>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::S32>>()
                                  .Ret<xla::ffi::Buffer<xla::ffi::S32>>());
