// The AVX2 + FMA variant of panel_linear.h (this file alone is compiled with -mavx2 -mfma),
// for x86-64 CPUs without AVX-512 (Zen 2/3, most laptops). 16 ymm registers hold a tile of
// 6 rows × 1 panel: 12 accumulators, the panel's 2 weight vectors and 1 broadcast x, so each
// k step is 2 weight loads, 6 broadcasts and 12 FMAs.
#include "panel_linear_tiles.h"

namespace gpt2fast {
namespace {

struct Avx2 {
  using Reg = __m256;
  using Mask = __m256i;
  static constexpr int kLanes = 8;
  static constexpr int kRowBlock = 6;
  static constexpr int kPanelBlock = 1;

  static Reg load(const float* p) { return _mm256_loadu_ps(p); }
  static Reg masked_load(const float* p, Mask m) { return _mm256_maskload_ps(p, m); }
  static void masked_store(float* p, Mask m, Reg v) { _mm256_maskstore_ps(p, m, v); }
  static Reg broadcast(float v) { return _mm256_set1_ps(v); }
  static Reg fmadd(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
  static Reg add(Reg a, Reg b) { return _mm256_add_ps(a, b); }
  static Mask mask_of(int columns) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(columns), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }

  // 2^n for integer-valued n in [-126, 127], built in the exponent field.
  static Reg pow2(__m256i n) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23)); }

  // e^a for |a| <= 100, to about 2 ulp: as the AVX-512 variant (a = n·ln 2 + r, degree-7
  // Taylor polynomial of e^r), then 2^n applied as 2^(n - n/2)·2^(n/2), each factor a normal
  // float, so the last product rounds once and overflows to inf or underflows to 0 as e^a.
  static Reg exp(Reg a) {
    const Reg n = _mm256_round_ps(_mm256_mul_ps(a, _mm256_set1_ps(1.44269504f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    Reg r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145752f), a);  // ln 2, high bits
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860677e-6f), r);     // ln 2, the rest
    Reg p = _mm256_set1_ps(1.0f / 5040);
    for (const float c : {1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) {
      p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    const __m256i whole = _mm256_cvtps_epi32(n);
    const __m256i half = _mm256_srai_epi32(whole, 1);
    return _mm256_mul_ps(_mm256_mul_ps(p, pow2(_mm256_sub_epi32(whole, half))), pow2(half));
  }

  // GPT-2's GELU as v / (1 + e^(-2u)), u = sqrt(2/π)·(v + 0.044715·v³) (see the AVX-512 variant).
  static Reg gelu_tanh(Reg v) {
    const Reg cube = _mm256_mul_ps(_mm256_mul_ps(v, v), v);
    const Reg u = _mm256_mul_ps(_mm256_set1_ps(0.797884561f), _mm256_fmadd_ps(_mm256_set1_ps(0.044715f), cube, v));
    const Reg clamped = _mm256_max_ps(_mm256_mul_ps(u, _mm256_set1_ps(-2.0f)), _mm256_set1_ps(-100.0f));
    return _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.0f), exp(_mm256_min_ps(clamped, _mm256_set1_ps(100.0f)))));
  }
};

}  // namespace

void panel_linear_avx2(const PanelLinearArgs& args) { panel_linear_on<Avx2>(args); }

}  // namespace gpt2fast
