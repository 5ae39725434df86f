r"""Forward-mode dense RTRL built on ``torch.func`` (the baseline of arXiv:2303.05641).

The influence matrix :math:`M_t = ds_t/d\theta` (state ``s``: ``c`` for EGRU, ``(q, i)``
for LIF; :math:`\theta`: the live parameters) is propagated column by column with
forward-mode AD of the SAME step function ``layer.step``:

.. math::

    M_t[:, k] = \mathrm{jvp}\big(f_t, (s_{t-1}, \theta), (M_{t-1}[:, k], e_k)\big), \qquad
    f_t(s, \theta) = \mathrm{core}(\mathrm{layer.step}(W(\theta), \mathrm{full}(s, \theta), x_t)),

vmapped over the columns ``k`` (in chunks), where ``full`` rebuilds the event and output
from the core state (the cell's ``state_from_components`` in its registry entry:
:math:`e = H(c - \vartheta)`, :math:`y = c e` for EGRU, :math:`e = y = H(q - v_{th})` for
LIF), so every path through :math:`e_{t-1}, y_{t-1}` is differentiated. At ``t = 0`` the initial state is a constant. The gradient is
:math:`\sum_t \bar y_t^\top (\partial y_t/\partial s\, M_t + \partial y_t/\partial\theta)`,
one ``vjp`` per step. No sparsity is exploited: every step costs
:math:`O(n^2 p_{\rm live})`, like dense-live RTRL, plus the overhead of AD.
Single layer of any registered cell, any batch size.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.func import jvp, vjp, vmap

from evrtrl.api import gradients, relative_error
from evrtrl.errors import ConfigError
from evrtrl.layer import Layer
from evrtrl.models import EGRU, LIF, Triangle, cell_spec, random_masks
from evrtrl.stats import EngineStats

__all__ = ["FuncRTRL"]


class FuncRTRL:
    """``.step(x) -> y``, ``.accumulate(dL_dy)``, ``.gradients()``, ``.stats`` like the engines."""

    name = "func"

    def __init__(self, layer: Layer, batch: int, chunk: int = 256) -> None:
        if not isinstance(layer, Layer):
            raise ConfigError(f"FuncRTRL takes a single layer (a registered cell), got {type(layer).__name__}")
        self.spec = cell_spec(layer)
        self.layer, self.B, self.chunk = layer, int(batch), int(chunk)
        masks = layer.masks
        self.names, self.shapes, self.live = [], [], []
        for name, p in layer.named_parameters(recurse=False):
            self.names.append(name)
            self.shapes.append(p.shape)
            live = masks[name].flatten() if name in masks else torch.ones(p.numel(), dtype=torch.bool)
            self.live.append(live.nonzero(as_tuple=True)[0])
        with torch.no_grad():
            self.theta = torch.cat([p.detach().flatten()[i] for p, i in
                                    zip(layer.parameters(recurse=False), self.live)])
        self.p_live = self.theta.numel()
        st = layer.initial_state(self.B)
        self.core = self._core(st)
        self.first_state = st
        self.first = True
        self.M = self.core.new_zeros(self.core.shape + (self.p_live,))  # (B, n m, p)
        self.grad = self.core.new_zeros(self.p_live)
        self.eye = torch.eye(self.p_live, dtype=self.theta.dtype)
        self.stats = EngineStats("func", p_live=self.p_live,
                                 p_total=sum(int(torch.Size(s).numel()) for s in self.shapes),
                                 influence_bytes=self.M.numel() * self.M.element_size())
        self._last = None

    # -------------------------------------------------------------- pure pieces
    def _weights(self, theta: torch.Tensor) -> Any:
        vals, o = {}, 0
        for name, shape, live in zip(self.names, self.shapes, self.live):
            flat = theta.new_zeros(int(torch.Size(shape).numel()))
            flat = flat.index_put((live,), theta[o:o + live.numel()])
            vals[name] = flat.view(shape)
            o += live.numel()
        base = self.layer.weights()  # frozen values (LIF neuron buffers) as the layer holds them
        return base._replace(**vals)

    def _core(self, st: Any) -> torch.Tensor:
        """The RTRL state ``s``: the first ``state_size`` fields of the state, side by side."""
        return torch.cat(tuple(st)[: self.layer.state_size], dim=1)

    def _full(self, s: torch.Tensor, w: Any) -> Any:
        comps = tuple(s.split(self.layer.hidden_size, dim=1))
        return self.spec.state_from_components(self.layer, w, comps)

    def _f(self, s, theta, x):
        w = self._weights(theta)
        prev = self.first_state if s is None else self._full(s, w)
        new, _ = self.layer.step(w, prev, x)
        return self._core(new)

    def _y(self, s, theta):
        return self._full(s, self._weights(theta)).y

    # ------------------------------------------------------------------ engine
    @torch.no_grad()
    def step(self, x: torch.Tensor) -> torch.Tensor:
        self.stats.begin_step()
        s_prev, th = self.core, self.theta
        cols = []
        for k0 in range(0, self.p_live, self.chunk):
            k1 = min(self.p_live, k0 + self.chunk)
            E = self.eye[k0:k1]
            if self.first:
                col = vmap(lambda e: jvp(lambda t: self._f(None, t, x), (th,), (e,))[1])(E)
            else:
                Mk = self.M[..., k0:k1].movedim(-1, 0)
                col = vmap(lambda m, e: jvp(lambda s, t: self._f(s, t, x), (s_prev, th),
                                            (m, e))[1])(Mk, E)
            cols.append(col.movedim(0, -1))
        self.M = torch.cat(cols, dim=-1)
        self.core = self._f(None if self.first else s_prev, th, x)
        self.first = False
        nm = self.core.shape[1]
        self.stats.add_macs("propagate", self.B * nm * nm * self.p_live)
        y = self._y(self.core, th)
        self.stats.end_step(float((y != 0).float().mean()), 1.0, 1.0)
        return y

    @torch.no_grad()
    def accumulate(self, dL_dy: torch.Tensor) -> None:
        _, pull = vjp(self._y, self.core, self.theta)
        g_s, g_t = pull(dL_dy.to(self.theta.dtype))
        self.grad += torch.einsum("bs,bsp->p", g_s, self.M) + g_t
        self.stats.add_macs("gradient", self.M.numel())

    def gradients(self) -> dict[str, torch.Tensor]:
        out, o = {}, 0
        for name, shape, live in zip(self.names, self.shapes, self.live):
            flat = self.grad.new_zeros(int(torch.Size(shape).numel()))
            flat[live] = self.grad[o:o + live.numel()]
            out[name] = flat.view(shape)
            o += live.numel()
        return out


def check_against_dense(verbose: bool = False) -> float:
    """Largest relative gradient error of FuncRTRL vs the dense engine and BPTT (float64)."""
    worst = 0.0
    g = torch.Generator().manual_seed(0)
    d, n, T = 4, 7, 25
    models = [
        EGRU(d, n, masks=random_masks(EGRU.weight_shapes(d, n), 0.5, seed=1), theta_init=0.3,
             pseudo_derivative=Triangle(0.7, 0.3), dtype=torch.float64, generator=g),
        LIF(d, n, tau_mem=0.02, tau_syn=0.01, dt=0.002, v_th=0.5, weight_scale=3.0,
            masks=random_masks(LIF.weight_shapes(d, n), 0.5, seed=2),
            pseudo_derivative=Triangle(0.3, 0.4), dtype=torch.float64, generator=g),
    ]
    for model in models:
        for B in (1, 2):
            x = torch.randn(T, B, d, dtype=torch.float64, generator=g) * 2
            tgt = torch.randn(T, B, n, dtype=torch.float64, generator=g)
            eng = FuncRTRL(model, B, chunk=16)
            for t in range(T):
                y = eng.step(x[t])
                eng.accumulate(2 * (y - tgt[t]))
            gf = eng.gradients()
            loss = lambda y, t: ((y - tgt[t]) ** 2).sum()  # noqa: E731
            for method in ("dense", "bptt"):
                ref = gradients(model, x, loss, method=method)
                for k in ref:
                    err = relative_error(gf[k], ref[k])
                    worst = max(worst, err)
                    if verbose and err > 1e-10:
                        print(type(model).__name__, B, method, k, err)
    return worst


if __name__ == "__main__":
    print("func vs dense/bptt worst relative error:", check_against_dense(verbose=True))
