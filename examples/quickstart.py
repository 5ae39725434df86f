"""Quick start: an activity-sparse EGRU, its exact gradient three ways, and the cell as a
drop-in torch module.

    python examples/quickstart.py            # a few seconds
    python examples/quickstart.py --quick    # smaller, for CI

1. ``evrtrl.simulate``: run the network (spikes, outputs, states per layer).
2. ``evrtrl.gradients``: the exact gradient of a per-step loss with the event-driven engine,
   equal to dense RTRL (<= 1e-12) and to BPTT (<= 1e-10) in float64; pruned weights get
   exactly zero gradient; ``stats`` says how much work the events saved.
3. ``outputs, state = cell(x, state)``: the cell inside one's own ``torch.nn.Module``,
   trained by autograd like ``torch.nn.GRU``.
4. ``evrtrl.OnlineLearner``: weight updates while the stream runs (exact RTRL, k = 1).
"""
from __future__ import annotations

import argparse

import torch

import evrtrl
from evrtrl.models import EGRU, Triangle, random_masks


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (CI)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    d, n, T, B = (3, 12, 30, 2) if args.quick else (3, 32, 100, 4)

    # an EGRU with 30 % of its weights alive; float64 for the exactness check
    masks = random_masks(EGRU.weight_shapes(d, n), density=0.3, seed=0)
    model = EGRU(d, n, pseudo_derivative=Triangle(gamma=0.7, width=0.3), masks=masks,
                 theta_init=0.2, dtype=torch.float64)
    x = torch.randn(T, B, d, dtype=torch.float64)

    out = evrtrl.simulate(model, x)
    print(f"simulate: outputs {tuple(out.outputs.shape)}, "
          f"{float((out.spikes != 0).double().mean()):.1%} of units emit an event per step")

    loss = lambda y, t: ((y - 0.2) ** 2).sum()  # noqa: E731  per-step loss L_t(y_t)
    g = {m: evrtrl.gradients(model, x, loss, method=m) for m in ("event", "dense", "bptt")}
    err_dense = max(g["event"].relative_error(g["dense"]).values())
    err_bptt = max(g["event"].relative_error(g["bptt"]).values())
    assert err_dense <= 1e-12 and err_bptt <= 1e-10, (err_dense, err_bptt)
    assert (g["event"]["U_z"][~model.masks["U_z"]] == 0).all()
    s = g["event"].stats.summary()
    print(f"gradients: event vs dense {err_dense:.1e}, vs BPTT {err_bptt:.1e} (relative); "
          f"beta {s['beta']:.2f}, {s['macs_per_step']:.0f} multiply-adds per step "
          f"(dense RTRL: {g['dense'].stats.summary()['macs_per_step']:.0f})")

    # the cell as a drop-in module: outputs, state = cell(x, state), differentiable by autograd
    class Classifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = EGRU(d, n, masks=masks, theta_init=0.2, dtype=torch.float64)
            self.head = torch.nn.Linear(n, 2, dtype=torch.float64)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y, _ = self.rnn(x)              # (T, B, n), like torch.nn.GRU
            return self.head(y.mean(0))

    net = Classifier()
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    labels = (x[:, :, 0].mean(0) > 0).long()
    for _ in range(5 if args.quick else 30):
        opt.zero_grad()
        ce = torch.nn.functional.cross_entropy(net(x), labels)
        ce.backward()
        opt.step()
    print(f"drop-in module: cross-entropy after training {float(ce.detach()):.3f}")

    # online learning: an optimizer step at every time step, exact RTRL gradient
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    learner = evrtrl.OnlineLearner(model, opt, loss, k=1, method="event")
    losses = learner.run(x)
    print(f"online: {learner.updates} updates, loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    print("quickstart: ok")
    return {"err_dense": err_dense, "err_bptt": err_bptt, "updates": learner.updates}


if __name__ == "__main__":
    main()
