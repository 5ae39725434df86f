// The event engine's influence update of one layer and one step, compiled (evrtrl/kernels).
//
// The same arithmetic as EventRTRL._propagate + _emission in evrtrl/event_engine.py, on the
// data layout of that module's docstring ("Data layout (the contract of a compiled kernel)"):
//
//   1. lazy diagonal pass T <- D T, materialisation of the units outside the hysteresis band
//      when some T_i left the trigger band;
//   2. the local factors of all groups scaled by T^{-1}: phis (B, n, G m);
//   3. recurrent coupling through the previous step's active units K_b (per sequence),
//      input coupling through the layer below's;
//   4. the immediate table: M.view(B, -1)[dest] += phis[phi_idx] * src[src_idx];
//   5. the output influence rows N_j[K_b] = (G T)[K_b] Mt[K_b] (+ the direct gains).
//
// A single coupling source in the row layout with m = 1 (one EGRU layer) runs 4 before 3 and
// writes the rows K of N inside the coupling pass (Emit), so M is read and written once.
//
// plus the gradient accumulation e^T N. Python keeps the column bookkeeping (births).
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>
#ifdef EVRTRL_PROFILE
#include <chrono>
#endif

namespace {

// -DEVRTRL_PROFILE builds (benchmarks/kernel_profile.py) time the phases of layer_update and
// accumulate; chunk_update books its precomputation (transforms, factors, gains, active sets)
// as "diag" and all its panel work (immediate, coupling, emission, gradient) as "coupling";
// profile() returns the seconds spent in each since the last call
#ifdef EVRTRL_PROFILE
constexpr const char* PHASES[] = {"diag", "phis", "coupling", "immediate", "emission", "accumulate"};
double phase_s[6] = {0, 0, 0, 0, 0, 0};
struct PhaseTimer {
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
  void lap(int phase) {
    const auto t1 = std::chrono::steady_clock::now();
    phase_s[phase] += std::chrono::duration<double>(t1 - t0).count();
    t0 = t1;
  }
};
#define EVRTRL_LAP(timer, phase) timer.lap(phase)
#else
struct PhaseTimer {};
#define EVRTRL_LAP(timer, phase) (void)timer
#endif

constexpr double T_LO = 0x1p-40, T_HI = 0x1p40, T_OFF = 0x1p8;
constexpr double R_LO = 0x1p-20, R_HI = 0x1p20, R_OFF = 0x1p4;
// cols layout: below this many multiply-adds the rank-k update runs as plain loops, above
// through the BLAS (the rows layout always runs its sparse loops)
constexpr int64_t BLAS_FROM = 1 << 15;

using torch::Tensor;

// a SIMD register of S (GCC/Clang vector extension): the rank-k micro-kernel's registers,
// 512 bits where the CPU has AVX-512, else 256 bits
#if defined(__AVX512F__)
constexpr int VBYTES = 64;
#else
constexpr int VBYTES = 32;
#endif
template <typename S>
using Vec __attribute__((vector_size(VBYTES))) = S;

struct Source {  // output influence of a layer (one step): Kp (B, k), N_j (B, k, P_j)
  Tensor Kp;
  int64_t k;
  std::vector<Tensor> Ns;
  const int64_t* cnt;  // (B): the active rows of each sequence (Kp[b, :cnt[b]]); nullptr: all k
};

// the active rows of sequence b in a padded set of k rows (the rest are padding with zero rows of N)
inline int64_t active_rows(const int64_t* cnt, int64_t b, int64_t k) { return cnt ? cnt[b] : k; }

// the per-sequence counts argument: a (B,) long tensor, or an empty one for "all k"
inline const int64_t* counts_of(const Tensor& c, int64_t B) {
  if (c.numel() == 0) return nullptr;
  TORCH_CHECK(c.dim() == 1 && c.size(0) == B && c.scalar_type() == torch::kLong && c.is_contiguous(),
              "evrtrl: per-sequence counts must be a contiguous (B,) long tensor");
  return c.data_ptr<int64_t>();
}

template <typename S>
bool ill(const S* T, int64_t BN, int64_t m) {
  if (m == 1) {
    for (int64_t i = 0; i < BN; ++i) {
      const double v = T[i];
      if (!(T_LO <= v && v <= T_HI)) return true;
    }
    return false;
  }
  for (int64_t i = 0; i < BN; ++i) {
    const S* t = T + i * m * m;
    for (int64_t c = 0; c < m; ++c) {
      const double d = std::abs(static_cast<double>(t[c * m + c]));
      if (!(T_LO <= d && d <= T_HI)) return true;
      for (int64_t r = 0; r < c; ++r)  // entry (r, c) over the diagonal of its column c
        if (!(std::abs(static_cast<double>(t[r * m + c])) / d <= T_OFF)) return true;
    }
  }
  return false;
}

template <typename S>
bool outside_band(const S* t, int64_t m) {
  if (m == 1) {
    const double v = t[0];
    return !(v >= R_LO && v <= R_HI);
  }
  for (int64_t c = 0; c < m; ++c) {
    const double d = std::abs(static_cast<double>(t[c * m + c]));
    if (!(d >= R_LO && d <= R_HI)) return true;
    for (int64_t r = 0; r < c; ++r)
      if (!(std::abs(static_cast<double>(t[r * m + c])) <= R_OFF * d)) return true;
  }
  return false;
}

// T_i <- D_i T_i for the BN units of t (D upper triangular, its nd entries at structure)
template <typename S>
void absorb(S* t, const S* dg, int64_t BN, int64_t m, int64_t nd,
            const std::vector<int64_t>& structure) {
  if (m == 1) {
    for (int64_t i = 0; i < BN; ++i) t[i] *= dg[i];
    return;
  }
  const int64_t mm = m * m;
  std::vector<S> D(mm), out(mm);
  for (int64_t i = 0; i < BN; ++i) {
    std::fill(D.begin(), D.end(), S(0));
    for (int64_t s = 0; s < nd; ++s) D[structure[s]] = dg[i * nd + s];
    S* ti = t + i * mm;
    for (int64_t r = 0; r < m; ++r)
      for (int64_t c = 0; c < m; ++c) {
        S acc = 0;
        for (int64_t q = 0; q < m; ++q) acc += D[r * m + q] * ti[q * m + c];
        out[r * m + c] = acc;
      }
    std::copy(out.begin(), out.end(), ti);
  }
}

// the units (of any sequence) outside the hysteresis band: the ones to materialise
template <typename S>
std::vector<int64_t> band_rows(const S* t, int64_t B, int64_t n, int64_t m) {
  std::vector<int64_t> rows;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t b = 0; b < B; ++b)
      if (outside_band<S>(t + (b * n + i) * m * m, m)) {
        rows.push_back(i);
        break;
      }
  return rows;
}

// out (B, n, G m) <- T^{-1} phis: upper triangular back substitution per unit and group
template <typename S>
void scale_phis(const Tensor& phis_in, const S* t, int64_t B, int64_t n, int64_t G, int64_t m,
                S* po) {
  auto pin = phis_in.accessor<S, 3>();
  const int64_t GM = G * m, mm = m * m;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < n; ++i) {
      const S* ti = t + (b * n + i) * mm;
      S* out = po + (b * n + i) * GM;
      for (int64_t g = 0; g < G; ++g)
        for (int64_t c = m - 1; c >= 0; --c) {
          S v = pin[b][i][g * m + c];
          for (int64_t q = c + 1; q < m; ++q) v -= ti[c * m + q] * out[g * m + q];
          out[g * m + c] = v / ti[c * m + c];
        }
    }
}

// A (B, R, k): A[b, i m + c, kk] = sum_g phis[b, i, (g0 + g) m + c] * W[g, i, K[b, kk]]
template <typename S>
void coupling_matrix(const S* phis, int64_t GM, int64_t g0, const S* W, int64_t G, int64_t nsrc,
                     const int64_t* Kp, int64_t k, const int64_t* cnt, int64_t B, int64_t n,
                     int64_t m, S* A) {
  const int64_t R = n * m;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t* K = Kp + b * k;
    const int64_t ka = active_rows(cnt, b, k);  // padded sources (zero rows of N) get A = 0
    for (int64_t i = 0; i < n; ++i) {
      const S* ph = phis + (b * n + i) * GM + g0 * m;
      for (int64_t c = 0; c < m; ++c) {
        S* a = A + (b * R + i * m + c) * k;
        for (int64_t kk = 0; kk < k; ++kk) a[kk] = 0;
        for (int64_t g = 0; g < G; ++g) {
          const S f = ph[g * m + c];
          if (f == S(0)) continue;
          const S* w = W + (g * n + i) * nsrc;
          for (int64_t kk = 0; kk < ka; ++kk) a[kk] += f * w[K[kk]];
        }
      }
    }
  }
}

// Mt[b][:, :P] += A[b] (R x k) N[b] (k x P), rows layout (row stride C). A is sparse (the
// projections are masked, phi has zeros): per row only its non-zero entries are used, and the
// product runs in register-sized column chunks over panels of N's columns that stay in L1
// (k x PC words, about EVRTRL_PANEL_BYTES) while every live row streams its segment of M;
// the segment EVRTRL_PF live rows ahead is prefetched (M does not fit the caches at large n).
// Measured with benchmarks/kernel_profile.py (docs/benchmarks.md, "compiled path"): the
// former 256 KB (L2) panels without prefetch were 1.2-1.25x slower at n = 256.
#ifndef EVRTRL_PANEL_BYTES
#define EVRTRL_PANEL_BYTES 24576
#endif
#ifndef EVRTRL_PF
#define EVRTRL_PF 4
#endif
// The emission fused into the row-layout coupling pass (m = 1): the rows K of N are written
// while their segment of M is in registers, N_j[b, s, p] = M[b, K[s], p] * g[b, s].
template <typename S>
struct Emit {
  S* N;               // (B, k, Pn) output rows of N_j
  int64_t k, Pn;      // rows per sequence, row stride (the born columns)
  const int64_t* slot;  // (B, R): position of a row in K_b, -1 if not active
  const S* g;         // (B, k): the gain times the transform of each active row
  char* covered;      // (B, R) out: 1 where the row's columns [0, P) were written here
};

template <typename S>
void rank_update_rows(S* M, int64_t C, const S* A, const S* N, int64_t B, int64_t R, int64_t k,
                      int64_t P, const Emit<S>* emit) {
  constexpr int LANES = VBYTES / sizeof(S), NV = 8;  // eight registers of accumulators
  constexpr int64_t CH = LANES * NV;
  std::vector<int64_t> ptr(R + 1), idx(R * k), live;
  std::vector<S> val(R * k);
  for (int64_t b = 0; b < B; ++b) {
    const S* Ab = A + b * R * k;
    const S* Nb = N + b * k * P;
    S* Mb = M + b * R * C;
    int64_t nz = 0;
    live.clear();
    for (int64_t r = 0; r < R; ++r) {
      ptr[r] = nz;
      for (int64_t kk = 0; kk < k; ++kk) {
        const S f = Ab[r * k + kk];
        if (f != S(0)) {
          idx[nz] = kk * P;
          val[nz++] = f;
        }
      }
      if (nz > ptr[r]) {
        live.push_back(r);
        if (emit && emit->slot[b * R + r] >= 0) emit->covered[b * R + r] = 1;
      }
    }
    ptr[R] = nz;
    if (!nz) continue;
    const int64_t L = static_cast<int64_t>(live.size());
    const int64_t PC = std::max<int64_t>(CH, int64_t(EVRTRL_PANEL_BYTES) / (sizeof(S) * std::max<int64_t>(k, 1)) / CH * CH);
    for (int64_t c0 = 0; c0 < P; c0 += PC) {
      const int64_t c1 = std::min(P, c0 + PC);
      const int64_t full = c0 + (c1 - c0) / CH * CH;
      for (int64_t li = 0; li < L; ++li) {
        const int64_t r = live[li];
        const int64_t e0 = ptr[r], e1 = ptr[r + 1];
        S* mrow = Mb + r * C;
#if EVRTRL_PF > 0
        if (li + EVRTRL_PF < L) {
          const char* nx = reinterpret_cast<const char*>(Mb + live[li + EVRTRL_PF] * C + c0);
          const int64_t bytes = (c1 - c0) * static_cast<int64_t>(sizeof(S));
          for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(nx + o, 1, 3);
        }
#endif
        const int64_t s_out = emit ? emit->slot[b * R + r] : -1;
        S* out = s_out >= 0 ? emit->N + (b * emit->k + s_out) * emit->Pn : nullptr;
        const S g = s_out >= 0 ? emit->g[b * emit->k + s_out] : S(0);
        for (int64_t p0 = c0; p0 < full; p0 += CH) {
          Vec<S> acc[NV];
          for (int v = 0; v < NV; ++v) std::memcpy(&acc[v], mrow + p0 + v * LANES, sizeof(Vec<S>));
          for (int64_t e = e0; e < e1; ++e) {
            const S f = val[e];
            const S* nrow = Nb + idx[e] + p0;
            for (int v = 0; v < NV; ++v) {
              Vec<S> nv;
              std::memcpy(&nv, nrow + v * LANES, sizeof(Vec<S>));
              acc[v] += f * nv;
            }
          }
          for (int v = 0; v < NV; ++v) std::memcpy(mrow + p0 + v * LANES, &acc[v], sizeof(Vec<S>));
          if (out)
            for (int v = 0; v < NV; ++v) {
              const Vec<S> o = acc[v] * g;
              std::memcpy(out + p0 + v * LANES, &o, sizeof(Vec<S>));
            }
        }
        for (int64_t e = e0; e < e1; ++e) {
          const S f = val[e];
          const S* nrow = Nb + idx[e];
          for (int64_t p = full; p < c1; ++p) mrow[p] += f * nrow[p];
        }
        if (out)
          for (int64_t p = full; p < c1; ++p) out[p] = mrow[p] * g;
      }
    }
  }
}

// Mt[b][:P, :] += N[b]^T (P x k) A[b]^T (k x R), cols layout (row stride R)
template <typename S>
void rank_update_cols(S* M, int64_t C, const S* A, const S* N, int64_t B, int64_t R, int64_t k,
                      int64_t P, std::vector<S>& AT) {
  AT.resize(static_cast<size_t>(k * R));
  for (int64_t b = 0; b < B; ++b) {
    const S* Ab = A + b * R * k;
    for (int64_t r = 0; r < R; ++r)
      for (int64_t kk = 0; kk < k; ++kk) AT[kk * R + r] = Ab[r * k + kk];
    const S* Nb = N + b * k * P;
    S* Mb = M + b * C * R;
    for (int64_t p = 0; p < P; ++p) {
      S* mrow = Mb + p * R;
      for (int64_t kk = 0; kk < k; ++kk) {
        const S f = Nb[kk * P + p];
        if (f == S(0)) continue;
        const S* at = AT.data() + kk * R;
        for (int64_t r = 0; r < R; ++r) mrow[r] += f * at[r];
      }
    }
  }
}

// emit (rows layout, m = 1; else nullptr): per block j the fused emission of its N_j, and
// Pc[j] <- the columns coupled in block j
template <typename S>
void couple(std::vector<Tensor>& M, bool cols, const Tensor& phis, int64_t g0, const Tensor& W,
            const Source& src, int64_t B, int64_t n, int64_t m, std::vector<int64_t>& macs,
            std::vector<Emit<S>>* emit, std::vector<int64_t>* Pc) {
  const int64_t G = W.size(0), nsrc = W.size(2), k = src.k, R = n * m;
  Tensor A = torch::empty({B, R, k}, phis.options());
  coupling_matrix<S>(phis.data_ptr<S>(), phis.size(2), g0, W.data_ptr<S>(), G, nsrc,
                     src.Kp.data_ptr<int64_t>(), k, src.cnt, B, n, m, A.data_ptr<S>());
  macs[2] += B * R * k * G;
  std::vector<S> AT;
  for (size_t j = 0; j < src.Ns.size(); ++j) {
    const Tensor& Nj = src.Ns[j];
    const int64_t P = Nj.size(2);
    if (!P) continue;
    Tensor& Mj = M[j];
    const int64_t C = cols ? Mj.size(1) : Mj.size(2);
    if (!cols) {
      rank_update_rows<S>(Mj.data_ptr<S>(), C, A.data_ptr<S>(), Nj.data_ptr<S>(), B, R, k, P,
                          emit ? &(*emit)[j] : nullptr);
      if (Pc) (*Pc)[j] = P;
    } else if (B * R * k * P >= BLAS_FROM) {
      Mj.narrow(1, 0, P).baddbmm_(Nj.transpose(1, 2), A.transpose(1, 2));
    } else {
      rank_update_cols<S>(Mj.data_ptr<S>(), C, A.data_ptr<S>(), Nj.data_ptr<S>(), B, R, k, P, AT);
    }
    macs[2] += B * R * k * P;
  }
}

Source source_of(const Tensor& Kp, int64_t k, const std::vector<Tensor>& Ns, const Tensor& cnt) {
  return Source{Kp, k, Ns, counts_of(cnt, Kp.size(0))};
}

template <typename S>
py::tuple layer_update_impl(std::vector<Tensor> M, bool cols, std::vector<int64_t> P_mat,
                            std::vector<int64_t> P_born, Tensor T, Tensor diag,
                            std::vector<int64_t> structure, bool first, Tensor phis_in,
                            int64_t n_rec, Tensor Wrec, Tensor Krec, int64_t krec,
                            std::vector<Tensor> Nrec, Tensor Crec, int64_t n_in, Tensor Win,
                            Tensor Klow, int64_t klow, std::vector<Tensor> Nlow, Tensor Clow,
                            Tensor phi_idx,
                            Tensor src_idx, Tensor dest, Tensor x, Tensor y_prev, Tensor gain,
                            Tensor gdirect, Tensor ucol, int64_t c0, Tensor y_new) {
  const int64_t B = T.size(0), n = T.size(1), m = gain.size(2), R = n * m;
  const int64_t nd = diag.size(2), GM = phis_in.size(2), G = GM / m;
  const int64_t l = static_cast<int64_t>(M.size()) - 1;
  std::vector<int64_t> macs(4, 0);  // diag, immediate, coupling, emission
  PhaseTimer timer;
  S* t = T.data_ptr<S>();
  const int64_t mm = m * m;
  // 1. lazy diagonal pass
  if (!first) {
    absorb<S>(t, diag.data_ptr<S>(), B * n, m, nd, structure);
    macs[0] += B * n * nd;
    if (ill<S>(t, B * n, m)) {
      const std::vector<int64_t> rows = band_rows<S>(t, B, n, m);
      for (size_t j = 0; j < M.size(); ++j) {
        const int64_t P = P_mat[j];
        if (!P) continue;
        S* Mj = M[j].data_ptr<S>();
        const int64_t C = cols ? M[j].size(1) : M[j].size(2);
        std::vector<S> old(m);
        for (int64_t b = 0; b < B; ++b)
          for (int64_t i : rows) {
            const S* ti = t + (b * n + i) * mm;
            if (!cols && m == 1) {  // one contiguous row: M[i, :P] *= T_i
              S* row = Mj + (b * R + i) * C;
              const S f = ti[0];
              for (int64_t p = 0; p < P; ++p) row[p] = f * row[p];
            } else if (!cols) {
              S* base = Mj + (b * R + i * m) * C;
              for (int64_t p = 0; p < P; ++p) {
                for (int64_t c = 0; c < m; ++c) old[c] = base[c * C + p];
                for (int64_t c = 0; c < m; ++c) {
                  S acc = 0;
                  for (int64_t q = c; q < m; ++q) acc += ti[c * m + q] * old[q];
                  base[c * C + p] = acc;
                }
              }
            } else {
              S* base = Mj + b * C * R + i * m;
              for (int64_t p = 0; p < P; ++p) {
                S* e = base + p * R;
                for (int64_t c = 0; c < m; ++c) old[c] = e[c];
                for (int64_t c = 0; c < m; ++c) {
                  S acc = 0;
                  for (int64_t q = c; q < m; ++q) acc += ti[c * m + q] * old[q];
                  e[c] = acc;
                }
              }
            }
          }
        macs[0] += B * static_cast<int64_t>(rows.size()) * nd * P;
      }
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i : rows) {
          S* ti = t + (b * n + i) * mm;
          for (int64_t r = 0; r < m; ++r)
            for (int64_t c = 0; c < m; ++c) ti[r * m + c] = (r == c) ? S(1) : S(0);
        }
    }
  }
  EVRTRL_LAP(timer, 0);
  // 2. phis <- T^{-1} phis (upper triangular back substitution per unit and group)
  Tensor phis = torch::empty({B, n, GM}, phis_in.options());
  scale_phis<S>(phis_in, t, B, n, G, m, phis.data_ptr<S>());
  macs[1] += B * n * G * nd;
  EVRTRL_LAP(timer, 1);
  // 3.-5. in this order: coupling, immediate table, emission; with one coupling source in the
  // rows layout and m = 1 instead: immediate table, then the coupling pass that also writes
  // the rows K of N (the additions to M commute; one pass over M instead of two)
  auto immediate = [&]() {
  {
      const int64_t E = dest.size(0), d = x.size(1);
      const int64_t* pi = phi_idx.data_ptr<int64_t>();
      const int64_t* si = src_idx.data_ptr<int64_t>();
      const int64_t* de = dest.data_ptr<int64_t>();
      const S* ph = phis.data_ptr<S>();
      S* Ml = M[l].data_ptr<S>();
      const int64_t per = M[l].numel() / B;
      auto xa = x.accessor<S, 2>();
      auto ya = y_prev.accessor<S, 2>();
      for (int64_t b = 0; b < B; ++b) {
        const S* phb = ph + b * n * GM;
        S* Mb = Ml + b * per;
        for (int64_t e = 0; e < E; ++e) {
          const int64_t s = si[e];
          const S v = s < d ? xa[b][s] : (s < d + n ? ya[b][s - d] : S(1));
          if (v == S(0)) continue;  // adds an exact zero
          Mb[de[e]] += phb[pi[e]] * v;
        }
      }
      macs[1] += B * E;
    }
  };
  // active units per sequence (rows K of N): known from the gains before the coupling
  const int64_t U = gdirect.size(0);
  auto ga = gain.accessor<S, 3>();
  const S* gd = gdirect.data_ptr<S>();
  std::vector<std::vector<int64_t>> act(B), rest(B);
  int64_t k = 0, count = 0;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < n; ++i) {
      bool a = false;
      for (int64_t c = 0; c < m && !a; ++c) a = ga[b][i][c] != S(0);
      for (int64_t u = 0; u < U && !a; ++u) a = gd[(u * B + b) * n + i] != S(0);
      (a ? act[b] : rest[b]).push_back(i);
    }
    count += static_cast<int64_t>(act[b].size());
    k = std::max<int64_t>(k, static_cast<int64_t>(act[b].size()));
  }
  int64_t alpha = 0;
  {
    const S* yn = y_new.data_ptr<S>();
    for (int64_t i = 0; i < y_new.numel(); ++i) alpha += yn[i] != S(0);
  }
  Tensor Kp = torch::empty({B, k}, torch::dtype(torch::kLong));
  Tensor counts = torch::empty({B}, torch::dtype(torch::kLong));
  int64_t* cnt = counts.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) cnt[b] = static_cast<int64_t>(act[b].size());
  int64_t* K = Kp.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {  // pad with inactive units (their rows of N are zero)
    int64_t q = 0;
    for (int64_t i : act[b]) K[b * k + q++] = i;
    for (size_t r = 0; q < k; ++r) K[b * k + q++] = rest[b][r];
  }
  // gT = gain T (row vector times the transform), (B, k, m) on the rows K
  std::vector<S> gT(static_cast<size_t>(B * k * m));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t kk = 0; kk < k; ++kk) {
      const int64_t i = K[b * k + kk];
      const S* ti = t + (b * n + i) * mm;
      for (int64_t c = 0; c < m; ++c) {
        S acc = 0;
        for (int64_t q = 0; q < m; ++q) acc += ga[b][i][q] * ti[q * m + c];
        gT[(b * k + kk) * m + c] = acc;
      }
    }
  std::vector<Tensor> Ns;
  for (size_t j = 0; j < M.size() && k; ++j) Ns.push_back(torch::empty({B, k, P_born[j]}, phis.options()));
  const bool rec = krec > 0 && n_rec > 0, low = klow > 0 && n_in > 0;
#ifndef EVRTRL_FUSE  // -DEVRTRL_FUSE=0: the unfused order, for A/B timing (kernel_profile.py)
#define EVRTRL_FUSE 1
#endif
  const bool fuse = EVRTRL_FUSE && !cols && m == 1 && k > 0 && rec != low;
  std::vector<Emit<S>> emit;
  std::vector<int64_t> Pc(M.size(), 0), slot;
  std::vector<std::vector<char>> covered;
  if (fuse) {
    slot.assign(static_cast<size_t>(B * R), -1);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t kk = cnt[b] - 1; kk >= 0; --kk) slot[b * R + K[b * k + kk]] = kk;
    covered.assign(M.size(), std::vector<char>(static_cast<size_t>(B * R), 0));
    for (size_t j = 0; j < M.size(); ++j)
      emit.push_back(Emit<S>{Ns[j].data_ptr<S>(), k, P_born[j], slot.data(), gT.data(),
                             covered[j].data()});
    immediate();
  }
  EVRTRL_LAP(timer, 3);
  // coupling: recurrent (previous step of this layer), input (this step of the layer below)
  if (rec)
    couple<S>(M, cols, phis, 0, Wrec, source_of(Krec, krec, Nrec, Crec), B, n, m, macs,
              fuse ? &emit : nullptr, &Pc);
  if (low)
    couple<S>(M, cols, phis, n_rec, Win, source_of(Klow, klow, Nlow, Clow), B, n, m, macs,
              fuse ? &emit : nullptr, &Pc);
  EVRTRL_LAP(timer, 2);
  if (!fuse) immediate();
  EVRTRL_LAP(timer, 3);
  if (!k) {
    EVRTRL_LAP(timer, 4);
    return py::make_tuple(Kp, 0, Ns, counts, count, alpha, macs);
  }
  // emission: the rows K of N not written by the coupling pass
  for (size_t j = 0; j < M.size(); ++j) {
    const int64_t P = P_born[j];
    S* No = Ns[j].data_ptr<S>();
    const S* Mj = M[j].data_ptr<S>();
    const int64_t C = cols ? M[j].size(1) : M[j].size(2);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t kk = 0; kk < k; ++kk) {
        const int64_t i = K[b * k + kk];
        const S* g = gT.data() + (b * k + kk) * m;
        S* out = No + (b * k + kk) * P;
        if (kk >= cnt[b]) {  // padding: an inactive unit, gain 0, its row of N is zero
          std::fill(out, out + P, S(0));
          continue;
        }
        if (!cols) {
          const S* base = Mj + (b * R + i * m) * C;
          {
            const S f = g[c0];
            const S* row = base + c0 * C;
            const int64_t p0 = fuse && covered[j][b * R + i] ? Pc[j] : 0;
            for (int64_t p = p0; p < P; ++p) out[p] = row[p] * f;
          }
          for (int64_t c = c0 + 1; c < m; ++c) {
            const S f = g[c];
            const S* row = base + c * C;
            for (int64_t p = 0; p < P; ++p) out[p] += f * row[p];
          }
        } else {
          const S* base = Mj + b * C * R + i * m;
          for (int64_t p = 0; p < P; ++p) {
            const S* e = base + p * R;
            S acc = e[c0] * g[c0];
            for (int64_t c = c0 + 1; c < m; ++c) acc += g[c] * e[c];
            out[p] = acc;
          }
        }
      }
    macs[3] += B * k * (m - c0) * P;
  }
  macs[3] += B * n * m * m;
  if (U) {
    S* Nl = Ns[l].data_ptr<S>();
    const int64_t P = P_born[l];
    const int64_t* uc = ucol.data_ptr<int64_t>();
    for (int64_t u = 0; u < U; ++u) {
      for (int64_t b = 0; b < B; ++b)
        for (int64_t kk = 0; kk < k; ++kk) {
          const int64_t i = K[b * k + kk];
          const int64_t col = uc[u * n + i];  // < 0: a column another shard tracks
          if (col >= 0 && col < P) Nl[(b * k + kk) * P + col] += gd[(u * B + b) * n + i];
        }
      macs[3] += B * k;
    }
  }
  EVRTRL_LAP(timer, 4);
  return py::make_tuple(Kp, k, Ns, counts, count, alpha, macs);
}

py::tuple layer_update(std::vector<Tensor> M, bool cols, std::vector<int64_t> P_mat,
                       std::vector<int64_t> P_born, Tensor T, Tensor diag,
                       std::vector<int64_t> structure, bool first, Tensor phis, int64_t n_rec,
                       Tensor Wrec, Tensor Krec, int64_t krec, std::vector<Tensor> Nrec,
                       Tensor Crec, int64_t n_in, Tensor Win, Tensor Klow, int64_t klow,
                       std::vector<Tensor> Nlow, Tensor Clow, Tensor phi_idx, Tensor src_idx,
                       Tensor dest,
                       Tensor x, Tensor y_prev, Tensor gain, Tensor gdirect, Tensor ucol,
                       int64_t c0, Tensor y_new) {
  TORCH_CHECK(T.is_contiguous(), "evrtrl layer_update: T must be contiguous");
  diag = diag.contiguous();
  gdirect = gdirect.contiguous();
  y_new = y_new.contiguous();
  for (const Tensor& Mj : M) TORCH_CHECK(Mj.is_contiguous(), "evrtrl: M blocks must be contiguous");
  py::tuple out;
  AT_DISPATCH_FLOATING_TYPES(T.scalar_type(), "evrtrl_layer_update", [&] {
    out = layer_update_impl<scalar_t>(M, cols, P_mat, P_born, T, diag, structure, first, phis,
                                      n_rec, Wrec, Krec, krec, Nrec, Crec, n_in, Win, Klow, klow,
                                      Nlow, Clow,
                                      phi_idx, src_idx, dest, x, y_prev, gain, gdirect, ucol, c0,
                                      y_new);
  });
  return out;
}

// grad[j][:P] += sum_{b, kk < cnt[b]} e[b, K[b, kk]] N_j[b, kk, :]
void accumulate(std::vector<Tensor> grad, Tensor e, Tensor Kp, int64_t k, std::vector<Tensor> Ns,
                Tensor counts) {
  const int64_t B = Kp.size(0);
  const int64_t* cnt = counts_of(counts, B);
  PhaseTimer timer;
  AT_DISPATCH_FLOATING_TYPES(grad[0].scalar_type(), "evrtrl_accumulate", [&] {
    using S = scalar_t;
    Tensor ee = e.to(grad[0].scalar_type()).contiguous();
    const S* ep = ee.data_ptr<S>();
    const int64_t nE = ee.size(1);
    const int64_t* K = Kp.data_ptr<int64_t>();
    for (size_t j = 0; j < Ns.size(); ++j) {
      const int64_t P = Ns[j].size(2);
      if (!P) continue;
      S* g = grad[j].data_ptr<S>();
      const S* N = Ns[j].data_ptr<S>();
      for (int64_t b = 0; b < B; ++b)
        for (int64_t kk = 0, ka = active_rows(cnt, b, k); kk < ka; ++kk) {  // padding rows are zero
          const S f = ep[b * nE + K[b * k + kk]];
          if (f == S(0)) continue;
          const S* row = N + (b * k + kk) * P;
          for (int64_t p = 0; p < P; ++p) g[p] += f * row[p];
        }
    }
  });
  EVRTRL_LAP(timer, 5);
}

// ---------------------------------------------------------------------------------------------
// Deferred steps (CompiledStep.flush in evrtrl/kernels/step.py): the influence updates of L steps
// whose forward parts (cell steps, births, the inputs of the transforms) already ran, done
// sequence by sequence and, within a sequence, panel of columns by panel of columns. Every part
// of a step acts on the columns of M independently (the transforms, coupling matrices, active
// sets and gains are per row; the immediate entries and direct gains sit in one column each), so
// a panel of columns goes through all L steps while it stays in cache: M is read from memory
// once per L steps instead of once per step. The arithmetic of each entry is that of
// layer_update (same terms; within a step: materialise, immediate, recurrent coupling, input
// coupling, emission), so the results agree with the step-by-step path up to rounding.

#ifndef EVRTRL_CHUNK_NV  // registers of accumulators per row in the coupling
#define EVRTRL_CHUNK_NV 8
#endif
#ifndef EVRTRL_CHUNK_PANEL_BYTES  // the rows x panel block of M that stays in cache (L2)
#define EVRTRL_CHUNK_PANEL_BYTES 262144
#endif

template <typename S>
struct Csr {  // the non-zero entries of a coupling matrix A (R x k) of one sequence, by row
  std::vector<int64_t> ptr, idx, live;
  std::vector<S> val;
  int64_t k = 0, kw = 0;      // columns, and words of a bitset over them
  std::vector<S> dense;       // A itself (R x k)
  std::vector<uint64_t> mask; // per row, the columns kk of its non-zeros (R x kw)
};

// A[i m + c, kk] = sum_g phis[i, (g0 + g) m + c] * W[g, i, K[kk]] (as coupling_matrix), one sequence
template <typename S>
void csr_coupling(const S* phis, int64_t GM, int64_t g0, const S* W, int64_t G, int64_t nsrc,
                  const int64_t* K, int64_t k, int64_t n, int64_t m, Csr<S>& out) {
  const int64_t R = n * m;
  out.ptr.resize(static_cast<size_t>(R + 1));
  out.idx.resize(static_cast<size_t>(R * k));
  out.val.resize(static_cast<size_t>(R * k));
  out.live.clear();
  out.k = k;
  out.kw = (k + 63) / 64;
  out.dense.resize(static_cast<size_t>(R * k));
  out.mask.assign(static_cast<size_t>(R * out.kw), 0);
  std::vector<S> a(static_cast<size_t>(k));
  int64_t nz = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < m; ++c) {
      const int64_t r = i * m + c;
      out.ptr[r] = nz;
      std::fill(a.begin(), a.end(), S(0));
      for (int64_t g = 0; g < G; ++g) {
        const S f = phis[i * GM + (g0 + g) * m + c];
        if (f == S(0)) continue;
        const S* w = W + (g * n + i) * nsrc;
        for (int64_t kk = 0; kk < k; ++kk) a[kk] += f * w[K[kk]];
      }
      for (int64_t kk = 0; kk < k; ++kk)
        if (a[kk] != S(0)) {
          out.idx[nz] = kk;
          out.val[nz++] = a[kk];
          out.mask[r * out.kw + (kk >> 6)] |= uint64_t(1) << (kk & 63);
        }
      std::copy(a.begin(), a.end(), out.dense.begin() + r * k);
      if (nz > out.ptr[r]) out.live.push_back(r);
    }
  out.ptr[R] = nz;
}

// Reach (unit column order, evrtrl.influence): the columns of unit i's parameters are the
// segment seg[i]:seg[i+1], and row r of M^{l,j} is non-zero only in the segments of the units
// of layer j in its reach set, a bitset of W = ceil(n_j / 64) words. A row's set grows by the
// sets of the rows that couple into it (through A's non-zeros); the emitted row N[kk] of unit
// K[kk] has the union of its state rows' sets. Every loop below visits only those segments:
// the skipped entries are exact zeros, so the arithmetic of every entry is unchanged.
using Bits = std::vector<uint64_t>;

inline int64_t round_up(int64_t x, int64_t a) { return (x + a - 1) / a * a; }

// room for n values of S starting at a multiple of VBYTES in t, a byte buffer the engine keeps
// over flushes (CompiledStep.scratch): grown (and zeroed) here when too small, so a long run
// allocates it once
template <typename S>
S* scratch_of(Tensor& t, int64_t n) {
  TORCH_CHECK(t.scalar_type() == torch::kUInt8 && t.dim() == 1 && t.device().is_cpu(),
              "evrtrl chunk_update: scratch buffers must be 1-d uint8 CPU tensors");
  const int64_t need = n * static_cast<int64_t>(sizeof(S)) + VBYTES;
  if (t.numel() < need) {
    c10::InferenceMode guard;  // the buffers may have been made under inference mode, or not
    t.resize_({need});
    t.zero_();
  }
  uint8_t* d = t.data_ptr<uint8_t>();
  const auto mis = reinterpret_cast<uintptr_t>(d) % VBYTES;
  return reinterpret_cast<S*>(d + (mis ? VBYTES - mis : 0));
}

inline void or_into(uint64_t* dst, const uint64_t* src, int64_t W) {
  for (int64_t w = 0; w < W; ++w) dst[w] |= src[w];
}

// f(i) for every unit i in [u0, u1) whose bit is set
template <typename F>
inline void for_bits(const uint64_t* set, int64_t u0, int64_t u1, F f) {
  for (int64_t w = u0 >> 6; w <= (u1 - 1) >> 6 && u0 < u1; ++w) {
    uint64_t word = set[w];
    if (w == (u0 >> 6) && (u0 & 63)) word &= ~uint64_t(0) << (u0 & 63);
    if (w == ((u1 - 1) >> 6) && (u1 & 63)) word &= ~uint64_t(0) >> (64 - (u1 & 63));
    while (word) {
      f(w * 64 + __builtin_ctzll(word));
      word &= word - 1;
    }
  }
}

// f(a, b) for every run [a, b) of consecutive units in [u0, u1) whose bits are set
template <typename F>
inline void for_runs(const uint64_t* set, int64_t u0, int64_t u1, F f) {
  int64_t a = -1, b = -1;
  for_bits(set, u0, u1, [&](int64_t i) {
    if (i != b) {
      if (a >= 0) f(a, b);
      a = i;
    }
    b = i + 1;
  });
  if (a >= 0) f(a, b);
}

// f(p0, p1) for the columns [p0, p1) of every run of units of set in [u0, u1) (unit i's
// columns seg[i]:seg[i+1]), clipped to the columns below hi; empty ranges are skipped
template <typename F>
inline void for_segments(const uint64_t* set, int64_t u0, int64_t u1, const int64_t* seg,
                         int64_t hi, F f) {
  for_runs(set, u0, u1, [&](int64_t a, int64_t z) {
    const int64_t p1 = std::min(seg[z], hi);
    if (p1 > seg[a]) f(seg[a], p1);
  });
}

// mrow[p0 : p0 + NVV LANES] += sum_q f[q] N[idx[q], same columns], the sum kept in registers.
// p0 is a multiple of LANES (and the rows of M and N start at multiples of VBYTES), so every
// load is aligned. The first register's lanes below head and the last register's lanes from
// tail on are outside the range (they belong to other segments of the same row): they are
// read with the register and written back blended, so they keep their values exactly
template <typename S, int NVV>
inline void couple_chunk(S* mrow, int64_t p0, int64_t head, int64_t tail, const S* f,
                         const int64_t* idx, const S* N, int64_t ldn, int64_t cnt) {
  constexpr int LANES = VBYTES / sizeof(S);
  Vec<S> acc[NVV];
  for (int v = 0; v < NVV; ++v) std::memcpy(&acc[v], mrow + p0 + v * LANES, sizeof(Vec<S>));
  const Vec<S> keep0 = acc[0], keep = acc[NVV - 1];
  for (int64_t q = 0; q < cnt; ++q) {
    const S fq = f[q];
    const S* nr = N + idx[q] * ldn + p0;
    for (int v = 0; v < NVV; ++v) {
      Vec<S> nv;
      std::memcpy(&nv, nr + v * LANES, sizeof(Vec<S>));
      acc[v] += fq * nv;
    }
  }
  if (head > 0 || tail < LANES) {  // the lanes outside the range: the old values
    using I = std::conditional_t<sizeof(S) == 8, int64_t, int32_t>;
    typedef I IVec __attribute__((vector_size(VBYTES)));
    IVec lane;
    for (int v = 0; v < LANES; ++v) lane[v] = v;
    acc[0] = lane >= static_cast<I>(head) ? acc[0] : keep0;
    acc[NVV - 1] = lane < static_cast<I>(tail) ? acc[NVV - 1] : keep;
  }
  for (int v = 0; v < NVV; ++v) std::memcpy(mrow + p0 + v * LANES, &acc[v], sizeof(Vec<S>));
}

// out[p] = f row[p] and, where fe != 0, g[p] += fe out[p] for p < len: the emission of a row
// with one state (m - c0 = 1) and its gradient term, in registers (the three arrays do not overlap)
template <typename S>
inline void emit_row(S* __restrict__ out, S* __restrict__ g, const S* __restrict__ row, const S f,
                     const S fe, const int64_t len) {
  constexpr int LANES = VBYTES / sizeof(S);
  int64_t p = 0;
  if (fe != S(0)) {
    for (; p + LANES <= len; p += LANES) {
      Vec<S> r, gv;
      std::memcpy(&r, row + p, sizeof(Vec<S>));
      std::memcpy(&gv, g + p, sizeof(Vec<S>));
      const Vec<S> v = r * f;
      gv += fe * v;
      std::memcpy(out + p, &v, sizeof(Vec<S>));
      std::memcpy(g + p, &gv, sizeof(Vec<S>));
    }
    for (; p < len; ++p) {
      const S v = row[p] * f;
      out[p] = v;
      g[p] += fe * v;
    }
    return;
  }
  for (; p + LANES <= len; p += LANES) {
    Vec<S> r;
    std::memcpy(&r, row + p, sizeof(Vec<S>));
    const Vec<S> v = r * f;
    std::memcpy(out + p, &v, sizeof(Vec<S>));
  }
  for (; p < len; ++p) out[p] = row[p] * f;
}

// M[r, segments] += sum_e A[r, e] N[idx_e, segments] over the units [u0, u1) of a panel. The
// sources whose emitted rows reach unit i (sup: W words per row of N) form a mask st[i] over
// the sources; consecutive units with the same mask form a group, whose columns are one range
// (the whole panel where the sets are full, as in long runs). Group by group: each live row's
// terms (its source mask AND the group's), then chunk by chunk of the range (N's rows of a
// chunk stay in L1), every row with its terms in registers. The chunks start at multiples of
// LANES columns: M (row stride C) and N (row stride ldn) are the flush's aligned scratch copies
// (chunk_update), whose rows start at multiples of VBYTES and hold every column a register of
// the range touches.
template <typename S>
struct CoupleScratch {  // reach_couple's buffers, kept over a whole flush (no allocation per call)
  Bits st;                        // per unit of the panel, its sources' mask; then all sources
  std::vector<S> f;               // the rows' factors (row q at q k) ...
  std::vector<int64_t> ix;        // ... and sources, where a group has not every source
  std::vector<const S*> fq;       // per live row: its factors,
  std::vector<const int64_t*> iq; // its sources,
  std::vector<int64_t> cnt;       // and how many
};

template <typename S>
void reach_couple(S* M, int64_t C, const Csr<S>& A, const S* N, int64_t ldn, const int64_t* seg,
                  int64_t u0, int64_t u1, int64_t hi, const uint64_t* sup, int64_t W,
                  CoupleScratch<S>& sc) {
  constexpr int LANES = VBYTES / sizeof(S), NV = EVRTRL_CHUNK_NV;
  constexpr int64_t CH = LANES * NV;
  const int64_t kw = A.kw, k = A.k, nl = static_cast<int64_t>(A.live.size());
  Bits& st = sc.st;
  st.assign(static_cast<size_t>((u1 - u0 + 1) * kw), 0);
  for (int64_t kk = 0; kk < k; ++kk)
    for_bits(sup + kk * W, u0, u1, [&](int64_t i) {
      st[(i - u0) * kw + (kk >> 6)] |= uint64_t(1) << (kk & 63);
    });
  uint64_t* every = st.data() + (u1 - u0) * kw;  // the mask of all k sources
  for (int64_t w = 0; w < kw; ++w) {
    const int64_t bits = std::min<int64_t>(64, k - w * 64);
    every[w] = bits == 64 ? ~uint64_t(0) : (uint64_t(1) << bits) - 1;
  }
  std::vector<S>& f = sc.f;
  std::vector<int64_t>& ix = sc.ix;
  std::vector<const S*>& fq = sc.fq;
  std::vector<const int64_t*>& iq = sc.iq;
  std::vector<int64_t>& cnt = sc.cnt;
  f.resize(static_cast<size_t>(std::max<int64_t>(1, nl * k)));
  ix.resize(f.size());
  fq.resize(static_cast<size_t>(nl));
  iq.resize(static_cast<size_t>(nl));
  cnt.resize(static_cast<size_t>(nl));
  for (int64_t i = u0; i < u1;) {
    const uint64_t* si = st.data() + (i - u0) * kw;
    int64_t i1 = i + 1;
    while (i1 < u1 && std::equal(si, si + kw, st.data() + (i1 - u0) * kw)) ++i1;
    const int64_t lo = seg[i], e = std::min(seg[i1], hi);
    i = i1;
    if (e <= lo) continue;
    bool any = false;
    if (std::equal(si, si + kw, every)) {  // every source: each row's terms as they are
      for (int64_t q = 0; q < nl; ++q) {
        const int64_t r = A.live[q];
        fq[q] = A.val.data() + A.ptr[r];
        iq[q] = A.idx.data() + A.ptr[r];
        cnt[q] = A.ptr[r + 1] - A.ptr[r];
        any = any || cnt[q];
      }
    } else {
      for (int64_t q = 0; q < nl; ++q) {  // each live row's terms of the group (row q at q k)
        const int64_t r = A.live[q];
        const uint64_t* rm = A.mask.data() + r * kw;
        const S* ar = A.dense.data() + r * k;
        S* fw = f.data() + q * k;
        int64_t* iw = ix.data() + q * k;
        int64_t c = 0;
        for (int64_t w = 0; w < kw; ++w)
          for (uint64_t word = rm[w] & si[w]; word; word &= word - 1) {
            const int64_t kk = w * 64 + __builtin_ctzll(word);
            fw[c] = ar[kk];
            iw[c++] = kk;
          }
        fq[q] = fw;
        iq[q] = iw;
        cnt[q] = c;
        any = any || c;
      }
    }
    if (!any) continue;
    for (int64_t p0 = lo & ~int64_t(LANES - 1); p0 < e; p0 += CH) {
      const int64_t head = std::max<int64_t>(0, lo - p0), wdt = std::min<int64_t>(CH, e - p0);
      const int64_t nv = (wdt + LANES - 1) / LANES, tail = wdt - (nv - 1) * LANES;
      for (int64_t q = 0; q < nl; ++q) {
        const int64_t c = cnt[q];
        if (!c) continue;
        S* mrow = M + A.live[q] * C;
        switch (nv) {
#define EVRTRL_NV_CASE(V) \
          case V: couple_chunk<S, V>(mrow, p0, head, tail, fq[q], iq[q], N, ldn, c); break;
          EVRTRL_NV_CASE(1) EVRTRL_NV_CASE(2) EVRTRL_NV_CASE(3) EVRTRL_NV_CASE(4)
          EVRTRL_NV_CASE(5) EVRTRL_NV_CASE(6) EVRTRL_NV_CASE(7) EVRTRL_NV_CASE(8)
#undef EVRTRL_NV_CASE
          default: break;
        }
      }
    }
  }
}

template <typename S>
py::tuple chunk_update_impl(
    std::vector<std::vector<Tensor>> M, std::vector<Tensor> T,
    std::vector<std::vector<int64_t>> structure, std::vector<int64_t> c0s,
    std::vector<int64_t> n_rec, std::vector<Tensor> Wrec, std::vector<int64_t> n_in,
    std::vector<Tensor> Win, std::vector<Tensor> phi_idx, std::vector<Tensor> src_idx,
    std::vector<Tensor> dest, std::vector<Tensor> ucol, std::vector<Tensor> Kp0,
    std::vector<int64_t> k0, std::vector<std::vector<Tensor>> N0, std::vector<Tensor> C0,
    std::vector<std::vector<Tensor>> diag, std::vector<std::vector<Tensor>> phis_in,
    std::vector<std::vector<Tensor>> gain, std::vector<std::vector<Tensor>> gdirect,
    std::vector<std::vector<Tensor>> xs, std::vector<std::vector<Tensor>> yprev,
    std::vector<std::vector<Tensor>> es, std::vector<std::vector<int64_t>> E,
    std::vector<std::vector<int64_t>> P_before, std::vector<std::vector<int64_t>> P_after,
    std::vector<bool> first, std::vector<Tensor> grad, std::vector<Tensor> seg,
    std::vector<std::vector<Tensor>> reach, std::vector<Tensor> scratch) {
  const int64_t NL = static_cast<int64_t>(M.size()), L = static_cast<int64_t>(first.size());
  const int64_t B = T[0].size(0);
  // multiply-adds per step: diag, immediate, coupling, emission, gradient
  std::vector<std::vector<int64_t>> macs(static_cast<size_t>(L), std::vector<int64_t>(5, 0));
  PhaseTimer timer;
  std::vector<int64_t> n(NL), m(NL), R(NL), mm(NL), nd(NL), GM(NL), G(NL), U(NL), d(NL);
  for (int64_t l = 0; l < NL; ++l) {
    n[l] = T[l].size(1);
    m[l] = gain[l][0].size(2);
    R[l] = n[l] * m[l];
    mm[l] = m[l] * m[l];
    nd[l] = diag[l][0].size(2);
    GM[l] = phis_in[l][0].size(2);
    G[l] = GM[l] / m[l];
    U[l] = gdirect[l][0].size(0);
    d[l] = xs[l][0].size(1);
  }
  // 1. per step and layer, for all sequences: the transforms (batch-wide materialisation
  //    decisions, as layer_update), the scaled factors, gain T and the active sets
  using Rows = std::vector<int64_t>;
  std::vector<std::vector<std::vector<S>>> ph(NL), fac(NL), gT(NL);
  std::vector<std::vector<Rows>> mrows(NL);
  std::vector<std::vector<std::vector<Rows>>> act(NL);  // [l][t][b]
  for (int64_t l = 0; l < NL; ++l) {
    ph[l].resize(L);
    fac[l].resize(L);
    gT[l].resize(L);
    mrows[l].resize(L);
    act[l].assign(L, std::vector<Rows>(B));
  }
  for (int64_t t = 0; t < L; ++t)
    for (int64_t l = 0; l < NL; ++l) {
      S* tt = T[l].data_ptr<S>();
      const int64_t nn = n[l], mq = m[l], M2 = mm[l];
      if (!first[t]) {
        absorb<S>(tt, diag[l][t].data_ptr<S>(), B * nn, mq, nd[l], structure[l]);
        macs[t][0] += B * nn * nd[l];
        if (ill<S>(tt, B * nn, mq)) {
          Rows& rows = mrows[l][t] = band_rows<S>(tt, B, nn, mq);
          const int64_t nr = static_cast<int64_t>(rows.size());
          std::vector<S>& f = fac[l][t];
          f.resize(static_cast<size_t>(B * nr * M2));
          for (int64_t b = 0; b < B; ++b)
            for (int64_t q = 0; q < nr; ++q) {
              S* ti = tt + (b * nn + rows[q]) * M2;
              std::copy(ti, ti + M2, f.begin() + (b * nr + q) * M2);
              for (int64_t r = 0; r < mq; ++r)
                for (int64_t c = 0; c < mq; ++c) ti[r * mq + c] = (r == c) ? S(1) : S(0);
            }
          for (int64_t j = 0; j <= l; ++j)
            macs[t][0] += B * nr * nd[l] * (j == l ? P_before[t][j] : P_after[t][j]);
        }
      }
      // phis <- T^{-1} phis
      ph[l][t].resize(static_cast<size_t>(B * nn * GM[l]));
      scale_phis<S>(phis_in[l][t], tt, B, nn, G[l], mq, ph[l][t].data());
      macs[t][1] += B * nn * G[l] * nd[l];
      // gain T and the active units
      auto ga = gain[l][t].accessor<S, 3>();
      const S* gd = gdirect[l][t].data_ptr<S>();
      std::vector<S>& gt = gT[l][t];
      gt.resize(static_cast<size_t>(B * nn * mq));
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < nn; ++i) {
          const S* ti = tt + (b * nn + i) * M2;
          bool a = false;
          for (int64_t c = 0; c < mq; ++c) {
            S acc = 0;
            for (int64_t q = 0; q < mq; ++q) acc += ga[b][i][q] * ti[q * mq + c];
            gt[(b * nn + i) * mq + c] = acc;
            a = a || ga[b][i][c] != S(0);
          }
          for (int64_t u = 0; u < U[l] && !a; ++u) a = gd[(u * B + b) * nn + i] != S(0);
          if (a) act[l][t][b].push_back(i);
        }
    }
  EVRTRL_LAP(timer, 0);
  // the engine's output influence after the last step: Kp padded with inactive units, N zero there
  std::vector<Tensor> Kp_out(NL), cnt_out(NL);
  std::vector<int64_t> k_out(NL), count_out(NL, 0), kmax(NL, 0);
  std::vector<std::vector<Tensor>> Ns_out(NL);
  const auto opt = T[0].options();
  for (int64_t l = 0; l < NL; ++l) {
    int64_t k = 0;
    for (int64_t b = 0; b < B; ++b) k = std::max<int64_t>(k, act[l][L - 1][b].size());
    for (int64_t t = 0; t < L; ++t)
      for (int64_t b = 0; b < B; ++b) kmax[l] = std::max<int64_t>(kmax[l], act[l][t][b].size());
    k_out[l] = k;
    Kp_out[l] = torch::empty({B, k}, torch::dtype(torch::kLong));
    cnt_out[l] = torch::empty({B}, torch::dtype(torch::kLong));
    int64_t* K = Kp_out[l].data_ptr<int64_t>();
    int64_t* cn = cnt_out[l].data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) {
      const Rows& a = act[l][L - 1][b];
      cn[b] = static_cast<int64_t>(a.size());
      count_out[l] += cn[b];
      int64_t q = 0;
      for (int64_t i : a) K[b * k + q++] = i;
      for (int64_t i = 0, s = 0; q < k; ++i) {  // padding: the inactive units in order
        if (s < cn[b] && a[s] == i) {
          ++s;
          continue;
        }
        K[b * k + q++] = i;
      }
    }
    if (k)
      for (int64_t j = 0; j <= l; ++j)  // zeros where the emission does not write (below)
        Ns_out[l].push_back(torch::empty({B, k, P_after[L - 1][j]}, opt));
  }
  // panels: runs of whole unit segments of about EVRTRL_CHUNK_PANEL_BYTES of M's rows (all
  // layers at or above the block); the immediate entries of each layer's own block by panel
  // (ascending entry index)
  std::vector<int64_t> Wd(NL);  // reach words per block
  std::vector<std::vector<int64_t>> pan(NL), pan_of(NL);  // unit bounds of the panels, unit -> panel
  for (int64_t j = 0; j < NL; ++j) {
    const int64_t* sg = seg[j].data_ptr<int64_t>();
    Wd[j] = (n[j] + 63) / 64;
    int64_t rows = 0;
    for (int64_t l = j; l < NL; ++l) rows += R[l];
    const int64_t PW = std::max<int64_t>(1, int64_t(EVRTRL_CHUNK_PANEL_BYTES) / (int64_t(sizeof(S)) * rows));
    pan_of[j].resize(static_cast<size_t>(n[j]));
    pan[j].push_back(0);
    for (int64_t i = 0; i < n[j]; ++i) {
      if (sg[i] - sg[pan[j].back()] >= PW) pan[j].push_back(i);
      pan_of[j][i] = static_cast<int64_t>(pan[j].size()) - 1;
    }
    pan[j].push_back(n[j]);
  }
  // the panels' aligned scratch copies of M (reach_couple): row stride Cs[j], a multiple of
  // LANES that holds a panel's columns from its first column rounded down to a multiple of LANES
  constexpr int64_t LANES = VBYTES / sizeof(S);
  std::vector<int64_t> Cs(NL);
  for (int64_t j = 0; j < NL; ++j) {
    const int64_t* sg = seg[j].data_ptr<int64_t>();
    int64_t w = 0;
    for (size_t q = 0; q + 1 < pan[j].size(); ++q) w = std::max(w, sg[pan[j][q + 1]] - sg[pan[j][q]]);
    Cs[j] = round_up(w + LANES - 1, LANES);
  }
  // (ibucket[l][panel]: the entries by source s in [0, d + n] (x, y, the constant 1), ascending
  // within a source; iptr[l][panel]: where each source's entries start; ioff: each entry's place
  // in the scratch copy, row dest / C at stride Cs)
  std::vector<std::vector<Rows>> ibucket(NL), iptr(NL), ioff(NL);
  for (int64_t l = 0; l < NL; ++l) {
    const int64_t C = M[l][l].size(2), ns = d[l] + n[l] + 1, np = static_cast<int64_t>(pan[l].size()) - 1;
    const int64_t* sg = seg[l].data_ptr<int64_t>();
    const int64_t* de = dest[l].data_ptr<int64_t>();
    const int64_t* si = src_idx[l].data_ptr<int64_t>();
    ibucket[l].assign(static_cast<size_t>(np), Rows());
    ioff[l].assign(static_cast<size_t>(np), Rows());
    iptr[l].assign(static_cast<size_t>(np), Rows(static_cast<size_t>(ns + 1), 0));
    // (the panel of an entry is found twice rather than stored: a per-flush array of every
    // entry would be a large allocation each flush, after which glibc's rising mmap threshold
    // lets the resident size creep in long runs)
    auto panel_of = [&](int64_t e) {
      return pan_of[l][std::upper_bound(sg, sg + n[l] + 1, de[e] % C) - sg - 1];
    };
    for (int64_t e = 0; e < E[l][L - 1]; ++e) ++iptr[l][panel_of(e)][si[e] + 1];
    for (int64_t q = 0; q < np; ++q) {
      Rows& ptr = iptr[l][q];
      for (int64_t c = 0; c < ns; ++c) ptr[c + 1] += ptr[c];
      ibucket[l][q].resize(static_cast<size_t>(ptr[ns]));
      ioff[l][q].resize(static_cast<size_t>(ptr[ns]));
    }
    std::vector<Rows> fill(iptr[l]);
    for (int64_t e = 0; e < E[l][L - 1]; ++e) {
      const int64_t q = panel_of(e), x = fill[q][si[e]]++;
      ibucket[l][q][x] = e;
      ioff[l][q][x] = de[e] / C * Cs[l] + de[e] % C;
    }
  }
  // per sequence, layer and step: the sources of non-zero value (their value)
  std::vector<std::vector<std::vector<std::pair<int64_t, S>>>> live_src(NL);
  for (int64_t l = 0; l < NL; ++l) live_src[l].resize(static_cast<size_t>(L));
  // per layer and block: the rows K of N of the steps inside the chunk (two alternating buffers,
  // row stride ldb[j]), the rows K0 of the engine's N before the chunk (ld0[l][j]), aligned
  std::vector<int64_t> ldb(NL);
  for (int64_t j = 0; j < NL; ++j) ldb[j] = round_up(P_after[L - 1][j], LANES);
  // (scratch: per layer l and block j <= l the buffers 2 x (l (l + 1) / 2 + j) and the next,
  // then per layer the panel's copy of M)
  TORCH_CHECK(static_cast<int64_t>(scratch.size()) == NL * (NL + 1) + NL,
              "evrtrl chunk_update: scratch must hold NL (NL + 1) + NL buffers, got ", scratch.size());
  std::vector<std::vector<S*>> buf(NL), n0s(NL);
  std::vector<std::vector<int64_t>> ld0(NL);
  for (int64_t l = 0; l < NL; ++l)
    for (int64_t j = 0; j <= l; ++j) {
      const int64_t x = 2 * (l * (l + 1) / 2 + j);
      buf[l].push_back(scratch_of<S>(scratch[x], 2 * kmax[l] * ldb[j]));
      ld0[l].push_back(k0[l] > 0 ? round_up(N0[l][j].size(2), LANES) : 0);
      n0s[l].push_back(scratch_of<S>(scratch[x + 1], k0[l] * ld0[l][j]));
    }
  // per layer: the panel's scratch copy of M^{l,j} (R x Cs[j], the largest j); per unit: its
  // rows' reach sets before (U0) and after (UL) the chunk
  std::vector<S*> ms(NL);
  for (int64_t l = 0; l < NL; ++l) {
    int64_t w = 0;
    for (int64_t j = 0; j <= l; ++j) w = std::max(w, Cs[j]);
    ms[l] = scratch_of<S>(scratch[NL * (NL + 1) + l], R[l] * w);
  }
  std::vector<std::vector<Bits>> U0(NL), UL(NL);
  for (int64_t l = 0; l < NL; ++l) {
    U0[l].resize(static_cast<size_t>(l + 1));
    UL[l].resize(static_cast<size_t>(l + 1));
  }
  Rows units(static_cast<size_t>(*std::max_element(n.begin(), n.end())));
  std::iota(units.begin(), units.end(), int64_t(0));
  // 2. sequence by sequence
  std::vector<std::vector<Csr<S>>> crec(NL, std::vector<Csr<S>>(L)), cin(NL, std::vector<Csr<S>>(L));
  // reach (see reach_couple), per layer l and block j <= l: rc[t] the sets of the rows after t
  // steps (rc[0]: the engine's), supE[t] the supports of the rows emitted at step t, supK0 of
  // the rows K0 before the chunk
  using Sets = std::vector<std::vector<std::vector<Bits>>>;
  Sets rc(NL), supE(NL);
  std::vector<std::vector<Bits>> supK0(NL);
  for (int64_t l = 0; l < NL; ++l) {
    rc[l].assign(l + 1, std::vector<Bits>(L + 1));
    supE[l].assign(l + 1, std::vector<Bits>(L));
    supK0[l].assign(l + 1, Bits());
  }
  CoupleScratch<S> csc;
  Bits notsup;
  for (int64_t b = 0; b < B; ++b) {
    // the recurrent source of a layer before the chunk: (K, k) of this sequence
    std::vector<const int64_t*> K0(NL, nullptr);
    std::vector<int64_t> k0b(NL, 0);
    for (int64_t l = 0; l < NL; ++l)
      if (k0[l] > 0) {
        K0[l] = Kp0[l].data_ptr<int64_t>() + b * k0[l];
        k0b[l] = C0[l].numel() ? C0[l].data_ptr<int64_t>()[b] : k0[l];
      }
    for (int64_t t = 0; t < L; ++t)
      for (int64_t l = 0; l < NL; ++l) {
        const S* phb = ph[l][t].data() + b * n[l] * GM[l];
        crec[l][t].live.clear();
        cin[l][t].live.clear();
        if (n_rec[l]) {
          const int64_t* K = t ? act[l][t - 1][b].data() : K0[l];
          const int64_t k = t ? static_cast<int64_t>(act[l][t - 1][b].size()) : k0b[l];
          if (k) {
            csr_coupling<S>(phb, GM[l], 0, Wrec[l].data_ptr<S>(), n_rec[l], Wrec[l].size(2), K, k,
                            n[l], m[l], crec[l][t]);
            macs[t][2] += R[l] * k * n_rec[l];
          }
        }
        if (l && n_in[l] && !act[l - 1][t][b].empty()) {
          const Rows& K = act[l - 1][t][b];
          const int64_t k = static_cast<int64_t>(K.size());
          csr_coupling<S>(phb, GM[l], n_rec[l], Win[l].data_ptr<S>(), n_in[l], Win[l].size(2),
                          K.data(), k, n[l], m[l], cin[l][t]);
          macs[t][2] += R[l] * k * n_in[l];
        }
      }
    for (int64_t t = 0; t < L; ++t)
      for (int64_t l = 0; l < NL; ++l) {
        auto& ls = live_src[l][t];
        ls.clear();
        const S* xb = xs[l][t].data_ptr<S>() + b * d[l];
        const S* yb = yprev[l][t].data_ptr<S>() + b * n[l];
        for (int64_t q = 0; q < d[l]; ++q)
          if (xb[q] != S(0)) ls.emplace_back(q, xb[q]);
        for (int64_t q = 0; q < n[l]; ++q)
          if (yb[q] != S(0)) ls.emplace_back(d[l] + q, yb[q]);
        ls.emplace_back(d[l] + n[l], S(1));
      }
    // the reach sets of this sequence through the chunk
    auto unite_rows = [&](Bits& out, const Bits& sets, const int64_t* K, int64_t k, int64_t mq,
                          int64_t W) {  // out[kk] = union over c of sets[K[kk] m + c]
      out.assign(static_cast<size_t>(k * W), 0);
      for (int64_t kk = 0; kk < k; ++kk)
        for (int64_t c = 0; c < mq; ++c) or_into(out.data() + kk * W, sets.data() + (K[kk] * mq + c) * W, W);
    };
    auto couple_sets = [&](Bits& cur, const Csr<S>& A, const Bits& src, int64_t W) {
      for (const int64_t r : A.live)  // row r gains the supports of its sources
        for (int64_t x = A.ptr[r]; x < A.ptr[r + 1]; ++x)
          or_into(cur.data() + r * W, src.data() + A.idx[x] * W, W);
    };
    for (int64_t l = 0; l < NL; ++l)
      for (int64_t j = 0; j <= l; ++j) {
        const int64_t W = Wd[j];
        const uint64_t* r0 = reinterpret_cast<const uint64_t*>(reach[l][j].data_ptr<int64_t>()) + b * R[l] * W;
        rc[l][j][0].assign(r0, r0 + R[l] * W);
        if (k0b[l]) unite_rows(supK0[l][j], rc[l][j][0], K0[l], k0b[l], m[l], W);
      }
    for (int64_t t = 0; t < L; ++t)
      for (int64_t l = 0; l < NL; ++l)
        for (int64_t j = 0; j <= l; ++j) {
          const int64_t W = Wd[j];
          Bits& cur = rc[l][j][t + 1] = rc[l][j][t];
          if (!crec[l][t].live.empty())
            couple_sets(cur, crec[l][t], t ? supE[l][j][t - 1] : supK0[l][j], W);
          if (l > j && !cin[l][t].live.empty())
            couple_sets(cur, cin[l][t], supE[l - 1][j][t], W);
          const Rows& K = act[l][t][b];
          unite_rows(supE[l][j][t], cur, K.data(), static_cast<int64_t>(K.size()), m[l], W);
        }
    for (int64_t l = 0; l < NL; ++l)
      for (int64_t j = 0; j <= l; ++j) {
        uint64_t* r0 = reinterpret_cast<uint64_t*>(reach[l][j].data_ptr<int64_t>()) + b * R[l] * Wd[j];
        std::copy(rc[l][j][L].begin(), rc[l][j][L].end(), r0);
      }
    for (int64_t l = 0; l < NL; ++l)  // per unit, the union of its rows' sets
      for (int64_t j = 0; j <= l; ++j) {
        unite_rows(U0[l][j], rc[l][j][0], units.data(), n[l], m[l], Wd[j]);
        unite_rows(UL[l][j], rc[l][j][L], units.data(), n[l], m[l], Wd[j]);
      }
    for (int64_t j = 0; j < NL; ++j) {
      const int64_t Pend = P_after[L - 1][j];
      const int64_t* sg = seg[j].data_ptr<int64_t>();
      const int64_t W = Wd[j];
      S* g = grad[j].data_ptr<S>();
      notsup.resize(static_cast<size_t>(W));
      for (int64_t l = j; l < NL; ++l) {
        if (k_out[l]) {  // the padding rows of the engine's N
          const int64_t c = static_cast<int64_t>(act[l][L - 1][b].size());
          S* rows = Ns_out[l][j].data_ptr<S>() + b * k_out[l] * Pend;
          std::fill(rows + c * Pend, rows + k_out[l] * Pend, S(0));
        }
      }
      // the rows K of N^{l,j} at step t of this sequence (t = -1: the engine's, copied by
      // panel), absolute columns: pointer and row stride
      auto n_at = [&](int64_t l, int64_t t) -> std::pair<const S*, int64_t> {
        if (t < 0) return {n0s[l][j], ld0[l][j]};
        return {buf[l][j] + (t & 1) * kmax[l] * ldb[j], ldb[j]};
      };
      for (size_t pn = 0; pn + 1 < pan[j].size(); ++pn) {
        const int64_t u0 = pan[j][pn], u1 = pan[j][pn + 1];
        const int64_t lo = sg[u0], hi_panel = std::min(Pend, sg[u1]);
        const int64_t base = lo & ~int64_t(LANES - 1);
        // the panel's rows of M into the scratch copies: the segments of the units' sets
        // before the chunk, zeros in those they gain during it (nothing else is read)
        for (int64_t l = j; l < NL; ++l) {
          const int64_t C = M[l][j].size(2), mq = m[l], hi = std::min(hi_panel, C);
          const S* Mb = M[l][j].data_ptr<S>() + b * R[l] * C;
          S* Mx = ms[l] - base;
          for (int64_t i = 0; i < n[l]; ++i) {
            const uint64_t* s0 = U0[l][j].data() + i * W;
            const uint64_t* sL = UL[l][j].data() + i * W;
            for (int64_t w = 0; w < W; ++w) notsup[w] = sL[w] & ~s0[w];
            for (int64_t c = 0; c < mq; ++c) {
              const int64_t r = i * mq + c;
              for_segments(s0, u0, u1, sg, hi, [&](int64_t p0, int64_t p1) {
                std::copy(Mb + r * C + p0, Mb + r * C + p1, Mx + r * Cs[j] + p0);
              });
              for_segments(notsup.data(), u0, u1, sg, hi, [&](int64_t p0, int64_t p1) {
                std::fill(Mx + r * Cs[j] + p0, Mx + r * Cs[j] + p1, S(0));
              });
            }
          }
          if (k0b[l] > 0) {  // the rows K0 of the engine's N, this panel's columns
            const int64_t ld = N0[l][j].size(2), e = std::min(hi_panel, ld);
            const S* src = N0[l][j].data_ptr<S>() + b * k0[l] * ld;
            S* dst = n0s[l][j];
            for (int64_t q = 0; q < k0b[l] && e > lo; ++q)
              std::copy(src + q * ld + lo, src + q * ld + e, dst + q * ld0[l][j] + lo);
          }
        }
        for (int64_t t = 0; t < L; ++t)
          for (int64_t l = j; l < NL; ++l) {
            const int64_t Cx = Cs[j], mq = m[l], M2 = mm[l];
            S* Mx = ms[l] - base;  // row r, column p at Mx[r Cx + p]
            // a. materialisation of the rows outside the band
            const Rows& rows = mrows[l][t];
            if (!rows.empty()) {
              const int64_t hi = std::min(hi_panel, j == l ? P_before[t][j] : P_after[t][j]);
              const int64_t nr = static_cast<int64_t>(rows.size());
              std::vector<S> old(mq);
              Bits sup;
              for (int64_t q = 0; q < nr && hi > lo; ++q) {
                const S* ti = fac[l][t].data() + (b * nr + q) * M2;
                S* rb = Mx + rows[q] * mq * Cx;
                unite_rows(sup, rc[l][j][t], &rows[q], 1, mq, W);  // the unit's rows before step t
                for_segments(sup.data(), u0, u1, sg, hi, [&](int64_t s0, int64_t s1) {
                  if (mq == 1) {
                    for (int64_t p = s0; p < s1; ++p) rb[p] = ti[0] * rb[p];
                  } else {
                    for (int64_t p = s0; p < s1; ++p) {
                      for (int64_t c = 0; c < mq; ++c) old[c] = rb[c * Cx + p];
                      for (int64_t c = 0; c < mq; ++c) {
                        S acc = 0;
                        for (int64_t q2 = c; q2 < mq; ++q2) acc += ti[c * mq + q2] * old[q2];
                        rb[c * Cx + p] = acc;
                      }
                    }
                  }
                });
              }
            }
            // b. the immediate entries of this panel born by step t
            if (l == j) {
              const int64_t* pi = phi_idx[l].data_ptr<int64_t>();
              const S* phb = ph[l][t].data() + b * n[l] * GM[l];
              const int64_t Et = E[l][t];
              const Rows& ptr = iptr[l][pn];
              const int64_t* ent = ibucket[l][pn].data();
              const int64_t* off = ioff[l][pn].data();
              for (const auto& sv : live_src[l][t])
                for (int64_t q = ptr[sv.first]; q < ptr[sv.first + 1] && ent[q] < Et; ++q)
                  Mx[off[q]] += phb[pi[ent[q]]] * sv.second;
            }
            // c. recurrent coupling through the previous step's active units
            if (!crec[l][t].live.empty()) {
              const auto pr = n_at(l, t - 1);
              const int64_t width = t ? P_after[t - 1][j] : N0[l][j].size(2);
              const int64_t hi = std::min(hi_panel, width);
              const Bits& sup = t ? supE[l][j][t - 1] : supK0[l][j];
              if (hi > lo)
                reach_couple<S>(Mx, Cx, crec[l][t], pr.first, pr.second, sg, u0, u1, hi, sup.data(),
                                W, csc);
            }
            // d. input coupling through the layer below's active units (same step)
            if (l > j && !cin[l][t].live.empty()) {
              const auto pr = n_at(l - 1, t);
              const int64_t hi = std::min(hi_panel, P_after[t][j]);
              if (hi > lo)
                reach_couple<S>(Mx, Cx, cin[l][t], pr.first, pr.second, sg, u0, u1, hi,
                                supE[l - 1][j][t].data(), W, csc);
            }
            // e. emission: N[kk] = (G T)[K[kk]] M[K[kk]] (+ the direct gains), f. gradient
            const Rows& K = act[l][t][b];
            if (K.empty()) continue;
            const int64_t hi = std::min(hi_panel, P_after[t][j]);
            if (hi <= lo) continue;
            // (the gradient term e_K N[kk] is added while the row is in registers; the direct
            // gains, one column each, are added to N and to the gradient afterwards)
            S* const nout = buf[l][j] + (t & 1) * kmax[l] * ldb[j];
            const S* gt = gT[l][t].data() + b * n[l] * mq;
            const int64_t c0 = c0s[l];
            const S* eb = es[l][t].numel() ? es[l][t].data_ptr<S>() + b * n[l] : nullptr;
            for (size_t kk = 0; kk < K.size(); ++kk) {
              const int64_t i = K[kk];
              S* __restrict__ out = nout + static_cast<int64_t>(kk) * ldb[j];
              const S* rb = Mx + i * mq * Cx;
              const S* gi = gt + i * mq;
              const S fe = eb ? eb[i] : S(0);
              S* __restrict__ gg = g;
              auto emit = [&](const int64_t lo, const int64_t hi) {
                if (mq - c0 == 1) {
                  emit_row<S>(out + lo, gg + lo, rb + c0 * Cx + lo, gi[c0], fe, hi - lo);
                  return;
                }
                {
                  const S f = gi[c0];
                  const S* row = rb + c0 * Cx;
                  for (int64_t p = lo; p < hi; ++p) out[p] = row[p] * f;
                }
                for (int64_t c = c0 + 1; c < mq; ++c) {
                  const S f = gi[c];
                  const S* row = rb + c * Cx;
                  for (int64_t p = lo; p < hi; ++p) out[p] += f * row[p];
                }
                if (fe != S(0))
                  for (int64_t p = lo; p < hi; ++p) gg[p] += fe * out[p];
              };
              // the segments of this row's support only: its readers read only those
              for_segments(supE[l][j][t].data() + kk * W, u0, u1, sg, hi, emit);
            }
            if (l == j && U[l]) {
              const int64_t* uc = ucol[l].data_ptr<int64_t>();
              const S* gd = gdirect[l][t].data_ptr<S>();
              for (int64_t u = 0; u < U[l]; ++u)
                for (size_t kk = 0; kk < K.size(); ++kk) {
                  const int64_t col = uc[u * n[l] + K[kk]];
                  if (col >= lo && col < hi) {
                    const S v = gd[(u * B + b) * n[l] + K[kk]];
                    nout[static_cast<int64_t>(kk) * ldb[j] + col] += v;
                    if (eb) g[col] += eb[K[kk]] * v;
                  }
                }
            }
            if (t == L - 1)  // the engine's N: the support's segments, exact zeros elsewhere
              for (size_t kk = 0; kk < K.size(); ++kk) {
                S* dst = Ns_out[l][j].data_ptr<S>() + (b * k_out[l] + static_cast<int64_t>(kk)) * Pend;
                const S* src = nout + static_cast<int64_t>(kk) * ldb[j];
                const uint64_t* sp = supE[l][j][t].data() + kk * W;
                for (int64_t w = 0; w < W; ++w) notsup[w] = ~sp[w];
                for_segments(sp, u0, u1, sg, hi, [&](int64_t p0, int64_t p1) {
                  std::copy(src + p0, src + p1, dst + p0);
                });
                for_segments(notsup.data(), u0, u1, sg, hi, [&](int64_t p0, int64_t p1) {
                  std::fill(dst + p0, dst + p1, S(0));
                });
              }
          }
        // the scratch copies back into M: the segments of the units' sets after the chunk
        for (int64_t l = j; l < NL; ++l) {
          const int64_t C = M[l][j].size(2), mq = m[l], hi = std::min(hi_panel, C);
          S* Mb = M[l][j].data_ptr<S>() + b * R[l] * C;
          const S* Mx = ms[l] - base;
          for (int64_t i = 0; i < n[l]; ++i)
            for (int64_t c = 0; c < mq; ++c) {
              const int64_t r = i * mq + c;
              for_segments(UL[l][j].data() + i * W, u0, u1, sg, hi, [&](int64_t p0, int64_t p1) {
                std::copy(Mx + r * Cs[j] + p0, Mx + r * Cs[j] + p1, Mb + r * C + p0);
              });
            }
        }
      }
      // multiply-adds of this block (counted once per sequence, not per panel)
      for (int64_t t = 0; t < L; ++t)
        for (int64_t l = j; l < NL; ++l) {
          const int64_t P = P_after[t][j], k = static_cast<int64_t>(act[l][t][b].size());
          const int64_t krec = t ? static_cast<int64_t>(act[l][t - 1][b].size()) : k0b[l];
          const int64_t Prec = t ? P_after[t - 1][j] : (k0[l] ? N0[l][j].size(2) : 0);
          if (n_rec[l]) macs[t][2] += R[l] * krec * Prec;
          if (l > j && n_in[l]) macs[t][2] += R[l] * static_cast<int64_t>(act[l - 1][t][b].size()) * P;
          macs[t][3] += k * (m[l] - c0s[l]) * P;
          if (es[l][t].numel()) macs[t][4] += k * P;
          if (l == j) macs[t][1] += E[l][t];
          if (l == j && k) macs[t][3] += n[l] * m[l] * m[l] + U[l] * k;  // G T, the direct gains
        }
    }
  }
  EVRTRL_LAP(timer, 2);
  py::list layers;
  for (int64_t l = 0; l < NL; ++l)
    layers.append(py::make_tuple(Kp_out[l], k_out[l], Ns_out[l], cnt_out[l], count_out[l]));
  return py::make_tuple(layers, macs);
}

py::tuple chunk_update(
    std::vector<std::vector<Tensor>> M, std::vector<Tensor> T,
    std::vector<std::vector<int64_t>> structure, std::vector<int64_t> c0s,
    std::vector<int64_t> n_rec, std::vector<Tensor> Wrec, std::vector<int64_t> n_in,
    std::vector<Tensor> Win, std::vector<Tensor> phi_idx, std::vector<Tensor> src_idx,
    std::vector<Tensor> dest, std::vector<Tensor> ucol, std::vector<Tensor> Kp0,
    std::vector<int64_t> k0, std::vector<std::vector<Tensor>> N0, std::vector<Tensor> C0,
    std::vector<std::vector<Tensor>> diag, std::vector<std::vector<Tensor>> phis,
    std::vector<std::vector<Tensor>> gain, std::vector<std::vector<Tensor>> gdirect,
    std::vector<std::vector<Tensor>> xs, std::vector<std::vector<Tensor>> yprev,
    std::vector<std::vector<Tensor>> es, std::vector<std::vector<int64_t>> E,
    std::vector<std::vector<int64_t>> P_before, std::vector<std::vector<int64_t>> P_after,
    std::vector<bool> first, std::vector<Tensor> grad, std::vector<Tensor> seg,
    std::vector<std::vector<Tensor>> reach, std::vector<Tensor> scratch) {
  TORCH_CHECK(!M.empty() && !first.empty(), "evrtrl chunk_update: no layers or no steps");
  for (const auto& row : M)
    for (const Tensor& Mj : row)
      TORCH_CHECK(Mj.is_contiguous() && Mj.dim() == 3, "evrtrl chunk_update: M blocks must be contiguous (B, R, C)");
  for (auto* lst : {&diag, &phis, &gain, &gdirect, &xs, &yprev, &es})
    for (auto& row : *lst)
      for (Tensor& v : row) v = v.contiguous();  // a no-op for the cells' own outputs
  py::tuple out;
  AT_DISPATCH_FLOATING_TYPES(T[0].scalar_type(), "evrtrl_chunk_update", [&] {
    out = chunk_update_impl<scalar_t>(M, T, structure, c0s, n_rec, Wrec, n_in, Win, phi_idx,
                                      src_idx, dest, ucol, Kp0, k0, N0, C0, diag, phis, gain,
                                      gdirect, xs, yprev, es, E, P_before, P_after, first, grad,
                                      seg, reach, scratch);
  });

  return out;
}

#ifdef EVRTRL_PROFILE
py::dict profile() {
  py::dict out;
  for (int i = 0; i < 6; ++i) {
    out[PHASES[i]] = phase_s[i];
    phase_s[i] = 0;
  }
  return out;
}
#endif

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("layer_update", &layer_update, "one layer's event-RTRL influence update (one step)");
  m.def("accumulate", &accumulate, "gradient accumulation e^T N over the active rows");
  m.def("chunk_update", &chunk_update, "the influence updates of several deferred steps, by sequence and column panel");
#ifdef EVRTRL_PROFILE
  m.def("profile", &profile, "seconds per phase since the last call (profiling builds only)");
#endif
}
