// The AVX-512F variant of panel_linear.h (this file alone is compiled with -mavx512f -mfma):
// 9 rows × 3 panels = 27 zmm accumulators, one zmm per 16-column panel, masks for the last
// panel's missing columns.
#include "panel_linear_tiles.h"

namespace gpt2fast {
namespace {

struct Avx512 {
  using Reg = __m512;
  using Mask = __mmask16;
  static constexpr int kLanes = 16;
  static constexpr int kRowBlock = 9;
  static constexpr int kPanelBlock = 3;

  static Reg load(const float* p) { return _mm512_loadu_ps(p); }
  static Reg masked_load(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
  static void masked_store(float* p, Mask m, Reg v) { _mm512_mask_storeu_ps(p, m, v); }
  static Reg broadcast(float v) { return _mm512_set1_ps(v); }
  static Reg fmadd(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  static Reg add(Reg a, Reg b) { return _mm512_add_ps(a, b); }
  static Mask mask_of(int columns) {
    return columns <= 0 ? Mask(0) : columns >= kLanes ? Mask(0xFFFF) : Mask((1u << columns) - 1u);
  }

  // e^a, to about 2 ulp: a = n·ln 2 + r with |r| <= ln 2 / 2, e^r by its degree-7 Taylor
  // polynomial (truncation below 1e-8), times 2^n by scalef (which overflows to inf and
  // underflows to 0 as e^a does).
  static Reg exp(Reg a) {
    const Reg n = _mm512_roundscale_ps(_mm512_mul_ps(a, _mm512_set1_ps(1.44269504f)),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    Reg r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), a);  // ln 2, high bits
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);     // ln 2, the rest
    Reg p = _mm512_set1_ps(1.0f / 5040);
    for (const float c : {1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) {
      p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    return _mm512_scalef_ps(p, n);
  }

  // GPT-2's GELU, 0.5·v·(1 + tanh(u)) with u = sqrt(2/π)·(v + 0.044715·v³), written as
  // v / (1 + e^(-2u)) (the same function; no cancellation where tanh(u) is near -1).
  static Reg gelu_tanh(Reg v) {
    const Reg cube = _mm512_mul_ps(_mm512_mul_ps(v, v), v);
    const Reg u = _mm512_mul_ps(_mm512_set1_ps(0.797884561f), _mm512_fmadd_ps(_mm512_set1_ps(0.044715f), cube, v));
    const Reg clamped = _mm512_max_ps(_mm512_mul_ps(u, _mm512_set1_ps(-2.0f)), _mm512_set1_ps(-100.0f));
    return _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0f), exp(_mm512_min_ps(clamped, _mm512_set1_ps(100.0f)))));
  }
};

}  // namespace

void panel_linear_avx512(const PanelLinearArgs& args) { panel_linear_on<Avx512>(args); }

}  // namespace gpt2fast
