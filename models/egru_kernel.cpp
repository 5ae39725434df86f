// EGRU step and its local Jacobian pieces, compiled: the same equations as egru_step and
// egru_jacobian in models/egru.py (the single definition; tests/core/test_compiled.py checks
// this kernel against them and their torch.func Jacobians). Triangle pseudo-derivative
// psi(s) = gamma max(0, 1 - |s| / width).
//
//   u = sigma(W_u x + U_u y + b_u), r = sigma(W_r x + U_r y + b_r), h_z = U_z y,
//   z = tanh(W_z x + r h_z + b_z), c' = u z + (1 - u)(c - theta e), e' = H(c' - theta), y' = c' e'
//
// Weights come packed: WT = [W_u; W_r; W_z]^T (d, 3n), UT = [U_u; U_r; U_z]^T (n, 3n), so the
// projections run over the non-zero sources only (x and y are sparse). The local factors are
// returned in the event engine's group order (U_u U_r U_z | W_u W_r W_z | b_u b_r b_z theta).
#include <torch/extension.h>

#include <cmath>
#include <vector>

namespace {

using torch::Tensor;

template <typename S>
S triangle(S s, S gamma, S width) {
  const S v = S(1) - std::abs(s) / width;
  return gamma * (v > S(0) ? v : S(0));
}

template <typename S>
S sigmoid(S a) {
  return S(1) / (S(1) + std::exp(-a));
}

template <typename S>
std::vector<Tensor> step_impl(Tensor x, Tensor c, Tensor e, Tensor y, Tensor WT, Tensor UT,
                              Tensor bias, Tensor theta, double gamma_, double width_, bool first) {
  const int64_t B = c.size(0), n = c.size(1), d = x.size(1), n3 = 3 * n;
  const S gamma = static_cast<S>(gamma_), width = static_cast<S>(width_);
  auto opt = c.options();
  Tensor c1 = torch::empty({B, n}, opt), e1 = torch::empty({B, n}, opt),
         y1 = torch::empty({B, n}, opt);
  Tensor diag = torch::empty({B, n, 1}, opt), phis = torch::empty({B, n, 10}, opt),
         gain = torch::empty({B, n, 1}, opt), gdir = torch::empty({1, B, n}, opt);
  const S *xp = x.data_ptr<S>(), *cp = c.data_ptr<S>(), *ep = e.data_ptr<S>(),
          *yp = y.data_ptr<S>(), *wt = WT.data_ptr<S>(), *ut = UT.data_ptr<S>(),
          *bp = bias.data_ptr<S>(), *th = theta.data_ptr<S>();
  S *c1p = c1.data_ptr<S>(), *e1p = e1.data_ptr<S>(), *y1p = y1.data_ptr<S>(),
    *dp = diag.data_ptr<S>(), *pp = phis.data_ptr<S>(), *gp = gain.data_ptr<S>(),
    *gdp = gdir.data_ptr<S>();
  std::vector<S> ax(n3), hy(n3);
  for (int64_t b = 0; b < B; ++b) {
    std::fill(ax.begin(), ax.end(), S(0));
    std::fill(hy.begin(), hy.end(), S(0));
    for (int64_t j = 0; j < d; ++j) {
      const S v = xp[b * d + j];
      if (v == S(0)) continue;
      const S* row = wt + j * n3;
      for (int64_t q = 0; q < n3; ++q) ax[q] += v * row[q];
    }
    for (int64_t j = 0; j < n; ++j) {
      const S v = yp[b * n + j];
      if (v == S(0)) continue;
      const S* row = ut + j * n3;
      for (int64_t q = 0; q < n3; ++q) hy[q] += v * row[q];
    }
    for (int64_t i = 0; i < n; ++i) {
      const int64_t o = b * n + i;
      const S t = th[i], cprev = cp[o], eprev = ep[o];
      const S u = sigmoid(ax[i] + hy[i] + bp[i]);
      const S r = sigmoid(ax[n + i] + hy[n + i] + bp[n + i]);
      const S hz = hy[2 * n + i];
      const S z = std::tanh(ax[2 * n + i] + r * hz + bp[2 * n + i]);
      const S one_u = S(1) - u;
      const S cn = u * z + one_u * (cprev - t * eprev);
      const S en = (cn - t) > S(0) ? S(1) : S(0);
      c1p[o] = cn;
      e1p[o] = en;
      y1p[o] = cn * en;
      const S psi_prev = first ? S(0) : triangle(cprev - t, gamma, width);
      const S phi_u = u * one_u * (z - cprev + t * eprev);
      const S phi_z = u * (S(1) - z * z);
      const S phi_r = phi_z * hz * r * (S(1) - r);
      const S psi = triangle(cn - t, gamma, width);
      dp[o] = one_u * (S(1) - t * psi_prev);
      S* ph = pp + o * 10;
      ph[0] = phi_u;
      ph[1] = phi_r;
      ph[2] = phi_z * r;
      ph[3] = phi_u;
      ph[4] = phi_r;
      ph[5] = phi_z;
      ph[6] = phi_u;
      ph[7] = phi_r;
      ph[8] = phi_z;
      ph[9] = -one_u * (eprev - t * psi_prev);
      gp[o] = en + cn * psi;
      gdp[o] = -cn * psi;
    }
  }
  return {c1, e1, y1, diag, phis, gain, gdir};
}

std::vector<Tensor> egru_step(Tensor x, Tensor c, Tensor e, Tensor y, Tensor WT, Tensor UT,
                              Tensor bias, Tensor theta, double gamma, double width, bool first) {
  std::vector<Tensor> out;
  const auto st = c.scalar_type();
  x = x.to(st).contiguous();
  c = c.contiguous();
  e = e.to(st).contiguous();
  y = y.to(st).contiguous();
  AT_DISPATCH_FLOATING_TYPES(st, "evrtrl_egru_step", [&] {
    out = step_impl<scalar_t>(x, c, e, y, WT, UT, bias, theta, gamma, width, first);
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("egru_step", &egru_step, "EGRU step + local Jacobian pieces (Triangle pseudo-derivative)");
}
