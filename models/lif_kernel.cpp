// LIF step and its local Jacobian pieces, compiled: the same equations as lif_step and
// lif_jacobian in models/lif.py (the single definition; tests/core/test_compiled.py checks
// this kernel against them and their torch.func Jacobians). Triangle pseudo-derivative.
//
//   v = reset(q, z)            zero: (1 - z) q + z v_reset;  subtract: q - z (v_th - v_reset)
//   j = i + U z [+ W x euler]
//   exact: q' = v_leak + a (v - v_leak) + b j,             i' = alpha j + W x
//   euler: q' = v + dt/tau_mem ((v_leak - v) + j),        i' = j + (-dt/tau_syn) j
//   z' = H(q' - v_th)
//
// Local pieces: D = [[a rho, b], [0, alpha]], phi^U = (b, alpha), phi^W = (0, 1) exact or
// (b, alpha) euler, G = (psi(q' - v_th), 0); rho = 1 - z - psi_prev (q - v_reset) (zero) or
// 1 - psi_prev (v_th - v_reset) (subtract), psi_prev = 0 at the first step.
// Weights come transposed: WT = W^T (d, n), UT = U^T (n, n) or empty (not recurrent).
#include <torch/extension.h>

#include <cmath>
#include <vector>

namespace {

using torch::Tensor;

struct Params {
  double a, b, alpha, v_th, v_leak, v_reset, dt_mem, dt_syn, gamma, width;
  bool zero_reset, euler;
};

template <typename S>
S triangle(S s, S gamma, S width) {
  const S v = S(1) - std::abs(s) / width;
  return gamma * (v > S(0) ? v : S(0));
}

template <typename S>
std::vector<Tensor> step_impl(Tensor x, Tensor q, Tensor i, Tensor z, Tensor WT, Tensor UT,
                              const Params& p, bool first) {
  const int64_t B = q.size(0), n = q.size(1), d = x.size(1);
  const bool rec = UT.numel() > 0;
  auto opt = q.options();
  Tensor q1 = torch::empty({B, n}, opt), i1 = torch::empty({B, n}, opt),
         z1 = torch::empty({B, n}, opt);
  const int64_t G = rec ? 2 : 1;
  Tensor diag = torch::empty({B, n, 3}, opt), phis = torch::empty({B, n, 2 * G}, opt),
         gain = torch::empty({B, n, 2}, opt);
  const S a = S(p.a), bb = S(p.b), al = S(p.alpha), vth = S(p.v_th), vleak = S(p.v_leak),
          vreset = S(p.v_reset), dtm = S(p.dt_mem), dts = S(p.dt_syn), gamma = S(p.gamma),
          width = S(p.width);
  const S *xp = x.data_ptr<S>(), *qp = q.data_ptr<S>(), *ip = i.data_ptr<S>(),
          *zp = z.data_ptr<S>(), *wt = WT.data_ptr<S>();
  const S* ut = rec ? UT.data_ptr<S>() : nullptr;
  S *q1p = q1.data_ptr<S>(), *i1p = i1.data_ptr<S>(), *z1p = z1.data_ptr<S>(),
    *dp = diag.data_ptr<S>(), *pp = phis.data_ptr<S>(), *gp = gain.data_ptr<S>();
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
      const S qprev = qp[o], zprev = zp[o];
      const S v = p.zero_reset ? (S(1) - zprev) * qprev + zprev * vreset
                               : qprev - zprev * (vth - vreset);
      S j = ip[o];
      if (p.euler) j = j + wx[u];
      if (rec) j = j + uz[u];
      S qn, in;
      if (p.euler) {
        qn = v + dtm * ((vleak - v) + j);
        in = j + dts * j;
      } else {
        qn = vleak + a * (v - vleak) + bb * j;
        in = al * j + wx[u];
      }
      const S zn = (qn - vth) > S(0) ? S(1) : S(0);
      q1p[o] = qn;
      i1p[o] = in;
      z1p[o] = zn;
      const S psi_prev = first ? S(0) : triangle(qprev - vth, gamma, width);
      const S rho = p.zero_reset ? S(1) - zprev - psi_prev * (qprev - vreset)
                                 : S(1) - psi_prev * (vth - vreset);
      S* dg = dp + o * 3;
      dg[0] = a * rho;
      dg[1] = bb;
      dg[2] = al;
      S* ph = pp + o * 2 * G;
      if (rec) {  // group order: U (recurrent), then W (input)
        ph[0] = bb;
        ph[1] = al;
        ph += 2;
      }
      ph[0] = p.euler ? bb : S(0);
      ph[1] = p.euler ? al : S(1);
      gp[o * 2] = triangle(qn - vth, gamma, width);
      gp[o * 2 + 1] = S(0);
    }
  }
  return {q1, i1, z1, diag, phis, gain};
}

std::vector<Tensor> lif_step(Tensor x, Tensor q, Tensor i, Tensor z, Tensor WT, Tensor UT,
                             std::vector<double> coef, bool zero_reset, bool euler, bool first) {
  TORCH_CHECK(coef.size() == 10, "lif_step: 10 coefficients expected");
  const Params p{coef[0], coef[1], coef[2], coef[3], coef[4], coef[5],
                 coef[6], coef[7], coef[8], coef[9], zero_reset, euler};
  std::vector<Tensor> out;
  const auto st = q.scalar_type();
  x = x.to(st).contiguous();
  q = q.contiguous();
  i = i.contiguous();
  z = z.to(st).contiguous();
  AT_DISPATCH_FLOATING_TYPES(st, "evrtrl_lif_step",
                             [&] { out = step_impl<scalar_t>(x, q, i, z, WT, UT, p, first); });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("lif_step", &lif_step, "LIF step + local Jacobian pieces (Triangle pseudo-derivative)");
}
