// LIF step and its local Jacobian pieces, compiled: the same equations as lif_step and
// lif_jacobian in models/lif.py (the single definition; tests/core/test_compiled.py checks
// this kernel against them and their torch.func Jacobians). Triangle pseudo-derivative
// psi(s) = gamma max(0, 1 - |s| / width). Every neuron parameter is per neuron.
//
//   v = reset(q, z)            zero: (1 - z) q + z v_reset;  subtract: q - z (v_th - v_reset)
// current-based (synapse), state (q, i):
//   j = i [+ (W x + bias) euler] + U z
//   exact: q' = v_leak + a (v - v_leak) + b j,        i' = alpha j + W x + bias
//   euler: q' = v + b ((v_leak - v) + j),              i' = j + (-c_s) j       (b = c_m)
// current-free, state q:  I = W x + U z + bias
//   exact: q' = v_leak + a (v - v_leak) + b I;         euler: q' = v + b ((I + v_leak) - v)
//   z' = H(q' - v_th)
//
// Local pieces: D = [[a rho, b], [0, alpha]] (current-free: a rho), phi^U = (b, alpha),
// phi^W = phi^bias = (0, 1) exact or (b, alpha) euler (current-free: b), G = (psi(q' - v_th), 0);
// rho = 1 - z - psi_prev (q - v_reset) (zero) or 1 - psi_prev (v_th - v_reset) (subtract),
// psi_prev = 0 at the first step. Direct derivatives of the trained neuron parameters
// (lif_jacobian's unit_phi; the i component is 0 unless stated):
//   v_th: a dv/dv_th, dv/dv_th = psi_prev (q - v_reset) (zero), -z + psi_prev (v_th - v_reset)
//         (subtract), and the direct output gain -psi(q' - v_th);
//   v_reset: a z;  v_leak: (1 - a) [+ a at the first step];  bias: phi^bias;
//   tau_mem, tau_syn: lif_tau_factors' factors times the terms named in its docstring.
//
// Inputs: WT = W^T (d, n), UT = U^T (n, n) or empty (not recurrent); coef (n, NC) in the
// state's dtype, one row per neuron (the columns below, from lif_terms / lif_tau_factors);
// units: the trained neuron parameters in the layer's order (codes: NEURON_PARAMETERS index).
// Returns q', i' (None when current-free), z', D, phis (the engine's group order: U, W, the
// units), G and the direct output gain (1, B, n) of v_th (None when v_th is not trained).
#include <torch/extension.h>

#include <cmath>
#include <vector>

namespace {

using torch::Tensor;

// columns of coef
enum Col : int64_t { A, B_, ALPHA, VTH, VLEAK, VRESET, BIAS, MCS, MEM_V, MEM_J, SYN_Q, SYN_I, NC };
// codes of the trained neuron parameters (models/lif.py NEURON_PARAMETERS order)
enum Unit : int64_t { TAU_MEM, TAU_SYN, V_TH, V_LEAK, V_RESET, BIAS_U };

template <typename S>
S triangle(S s, S gamma, S width) {
  const S v = S(1) - std::abs(s) / width;
  return gamma * (v > S(0) ? v : S(0));
}

struct Config {
  bool zero_reset, euler, synapse, first;
  double gamma, width;
};

template <typename S>
std::vector<Tensor> step_impl(Tensor x, Tensor q, Tensor i, Tensor z, Tensor WT, Tensor UT,
                              Tensor coef, const std::vector<int64_t>& units, const Config& c) {
  const int64_t B = q.size(0), n = q.size(1), d = x.size(1);
  const bool rec = UT.numel() > 0, syn = c.synapse, euler = c.euler, first = c.first;
  const int64_t m = syn ? 2 : 1, U = static_cast<int64_t>(units.size());
  const int64_t G = (rec ? 1 : 0) + 1 + U;  // groups: U (recurrent), W (input), the units
  bool direct = false;
  for (auto u : units) direct = direct || u == V_TH;
  auto opt = q.options();
  // i1 (current-free) and gdir (no trained v_th) stay undefined: None in Python
  Tensor q1 = torch::empty({B, n}, opt), z1 = torch::empty({B, n}, opt), i1, gdir;
  if (syn) i1 = torch::empty({B, n}, opt);
  if (direct) gdir = torch::empty({1, B, n}, opt);
  Tensor diag = torch::empty({B, n, syn ? 3 : 1}, opt), phis = torch::empty({B, n, G * m}, opt),
         gain = torch::empty({B, n, m}, opt);
  const S gamma = S(c.gamma), width = S(c.width);
  const S *xp = x.data_ptr<S>(), *qp = q.data_ptr<S>(), *zp = z.data_ptr<S>(),
          *wt = WT.data_ptr<S>(), *cf = coef.data_ptr<S>();
  const S* ip = syn ? i.data_ptr<S>() : nullptr;
  const S* ut = rec ? UT.data_ptr<S>() : nullptr;
  S *q1p = q1.data_ptr<S>(), *z1p = z1.data_ptr<S>(), *dp = diag.data_ptr<S>(),
    *pp = phis.data_ptr<S>(), *gp = gain.data_ptr<S>();
  S* i1p = syn ? i1.data_ptr<S>() : nullptr;
  S* gdp = direct ? gdir.data_ptr<S>() : nullptr;
  std::vector<S> wx(n), uz(n);
  for (int64_t b = 0; b < B; ++b) {
    std::fill(wx.begin(), wx.end(), S(0));
    std::fill(uz.begin(), uz.end(), S(0));
    for (int64_t k = 0; k < d; ++k) {
      const S v = xp[b * d + k];
      if (v == S(0)) continue;
      const S* row = wt + k * n;
      for (int64_t r = 0; r < n; ++r) wx[r] += v * row[r];
    }
    if (rec)
      for (int64_t k = 0; k < n; ++k) {
        const S v = zp[b * n + k];
        if (v == S(0)) continue;
        const S* row = ut + k * n;
        for (int64_t r = 0; r < n; ++r) uz[r] += v * row[r];
      }
    for (int64_t u = 0; u < n; ++u) {
      const int64_t o = b * n + u;
      const S* cu = cf + u * NC;
      const S a = cu[A], bb = cu[B_], al = cu[ALPHA], vth = cu[VTH], vleak = cu[VLEAK],
              vreset = cu[VRESET], bias = cu[BIAS];
      const S qprev = qp[o], zprev = zp[o];
      const S v = c.zero_reset ? (S(1) - zprev) * qprev + zprev * vreset
                               : qprev - zprev * (vth - vreset);
      S j, qn;  // j: the drive (current-based: the current after the jumps; current-free: I)
      if (syn) {
        j = ip[o];
        if (euler) j = j + (wx[u] + bias);
        if (rec) j = j + uz[u];
        if (euler) {
          qn = v + bb * ((vleak - v) + j);
          i1p[o] = j + cu[MCS] * j;
        } else {
          qn = vleak + a * (v - vleak) + bb * j;
          i1p[o] = al * j + wx[u] + bias;
        }
      } else {
        j = wx[u];
        if (rec) j = j + uz[u];
        j = j + bias;
        qn = euler ? v + bb * ((j + vleak) - v) : vleak + a * (v - vleak) + bb * j;
      }
      q1p[o] = qn;
      z1p[o] = (qn - vth) > S(0) ? S(1) : S(0);
      const S psi_prev = first ? S(0) : triangle(qprev - vth, gamma, width);
      const S rho = c.zero_reset ? S(1) - zprev - psi_prev * (qprev - vreset)
                                 : S(1) - psi_prev * (vth - vreset);
      const S psi = triangle(qn - vth, gamma, width);
      S* dg = dp + o * (syn ? 3 : 1);
      dg[0] = a * rho;
      S* gn = gp + o * m;
      gn[0] = psi;
      // phi^W (= phi^bias) and phi^U, (q, i) components
      const S wq = syn ? (euler ? bb : S(0)) : bb, wi = syn ? (euler ? al : S(1)) : S(0);
      if (syn) {
        dg[1] = bb;
        dg[2] = al;
        gn[1] = S(0);
      }
      S* ph = pp + o * G * m;
      if (rec) {
        ph[0] = bb;
        if (syn) ph[1] = al;
        ph += m;
      }
      ph[0] = wq;
      if (syn) ph[1] = wi;
      ph += m;
      for (int64_t k = 0; k < U; ++k, ph += m) {
        S dq = S(0), di = S(0);
        switch (units[k]) {
          case V_TH:
            dq = a * (c.zero_reset ? psi_prev * (qprev - vreset)
                                   : -zprev + psi_prev * (vth - vreset));
            gdp[o] = -psi;
            break;
          case V_RESET:
            dq = a * zprev;
            break;
          case V_LEAK:
            dq = first ? (S(1) - a) + a : S(1) - a;
            break;
          case BIAS_U:
            dq = wq;
            di = wi;
            break;
          case TAU_MEM:
            if (!syn)
              dq = cu[MEM_V] * (euler ? (j + vleak) - v : v - vleak - j);
            else if (euler)
              dq = cu[MEM_V] * ((vleak - v) + j);
            else
              dq = cu[MEM_V] * (v - vleak) + cu[MEM_J] * j;
            break;
          case TAU_SYN:
            if (!euler) dq = cu[SYN_Q] * j;
            di = cu[SYN_I] * j;
            break;
          default:
            TORCH_CHECK(false, "lif_step: unknown neuron parameter code ", units[k]);
        }
        ph[0] = dq;
        if (syn) ph[1] = di;
      }
    }
  }
  return {q1, i1, z1, diag, phis, gain, gdir};
}

std::vector<Tensor> lif_step(Tensor x, Tensor q, Tensor i, Tensor z, bool first, Tensor WT,
                             Tensor UT, Tensor coef, std::vector<int64_t> units, bool zero_reset,
                             bool euler, bool synapse, double gamma, double width) {
  const auto st = q.scalar_type();
  TORCH_CHECK(coef.dim() == 2 && coef.size(0) == q.size(1) && coef.size(1) == NC &&
                  coef.scalar_type() == st && coef.is_contiguous(),
              "lif_step: coef must be a contiguous (n, ", int64_t(NC), ") tensor of the state's dtype");
  for (auto u : units)
    TORCH_CHECK(u >= TAU_MEM && u <= BIAS_U && (synapse || u != TAU_SYN),
                "lif_step: unknown neuron parameter code ", u);
  const Config c{zero_reset, euler, synapse, first, gamma, width};
  std::vector<Tensor> out;
  x = x.to(st).contiguous();
  q = q.contiguous();
  if (synapse) i = i.contiguous();
  z = z.to(st).contiguous();
  AT_DISPATCH_FLOATING_TYPES(st, "evrtrl_lif_step", [&] {
    out = step_impl<scalar_t>(x, q, i, z, WT, UT, coef, units, c);
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("lif_step", &lif_step, "LIF step + local Jacobian pieces (Triangle pseudo-derivative)");
}
