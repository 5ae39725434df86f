"""Train a small recurrent LIF network with exact event-driven RTRL, then map it onto chips.

Task (synthetic, seeded): 12 input channels, T steps, 4 classes. Each class has a
fixed spatio-temporal rate template (each channel is active in one class-specific
window of the sequence); a sample draws Bernoulli spikes from its class template
(plus background noise). Model: ``Stack(LIF 12 -> 40 recurrent, LIF 40 -> 4 output
neurons, no recurrence)`` trained online with ``evrtrl.OnlineLearner(method="event")``;
the loss is the cross-entropy of a 4x4 linear readout (``models.Readout``, trained via
``extra_parameters``) of the output spikes, at every step of the second half.
Prediction = argmax of the readout of the output spike counts (host-side readout,
the same float readout for the float and the quantised network).

Then ``map_to_hardware`` on Loihi 2, Xylo Audio 2 and SpiNNaker 2 with test inputs,
labels, loss and prediction, and print the three reports.

    python -m evrtrl.neuromorphic.examples.map_trained            # full (about 4 minutes on 2 CPU cores)
    python -m evrtrl.neuromorphic.examples.map_trained --quick    # smoke test (seconds)
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

TARGETS = ("loihi2", "xylo_audio2", "spinnaker2")


def make_task(n: int, *, T: int, d: int = 12, classes: int = 4, seed: int = 0):
    """``x`` (T, n, d) float spikes, ``y`` (n,) int64 labels; templates fixed by ``seed=0``."""
    trng = np.random.default_rng(1234)  # templates: the same for train and test sets
    rates = np.full((classes, T, d), 0.02)
    for c in range(classes):
        for i in range(d):
            start = trng.integers(0, T - T // 4)
            rates[c, start:start + T // 4, i] = trng.choice([0.05, 0.5])
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = (rng.random((n, T, d)) < rates[y]).astype(np.float32)
    return torch.from_numpy(x.transpose(1, 0, 2).copy()), torch.from_numpy(y)


def build(seed: int = 0):
    from evrtrl.models import LIF, Readout, Stack

    torch.manual_seed(seed)
    kw = dict(tau_mem=20e-3, tau_syn=5e-3, dt=1e-3, v_th=1.0)
    model = Stack(LIF(12, 40, recurrent=True, **kw), LIF(40, 4, recurrent=False, **kw))
    with torch.no_grad():
        model.layers[0].W.mul_(10.0)  # default init is too weak to make these LIFs spike
        model.layers[1].W.mul_(5.0)
    readout = Readout(4, 4)
    with torch.no_grad():
        readout.weight.copy_(torch.eye(4))
        readout.bias.zero_()
    return model, readout


def train(model, readout, x, y, *, epochs: int, batch: int, lr: float = 0.02, log=print):
    import evrtrl

    T = x.shape[0]
    opt = torch.optim.Adam(list(model.parameters()) + list(readout.parameters()), lr=lr)
    for ep in range(epochs):
        perm = torch.randperm(x.shape[1])
        tot = 0.0
        for b in range(x.shape[1] // batch):
            idx = perm[b * batch:(b + 1) * batch]
            lab = y[idx]

            def loss(yt, t, lab=lab):
                if t < T // 2:
                    return None
                return torch.nn.functional.cross_entropy(readout(yt) * 4.0, lab) / (T - T // 2)

            learner = evrtrl.OnlineLearner(model, opt, loss, k=T, method="event",
                                           extra_parameters=readout.parameters())
            tot += float(np.nansum(learner.run(x[:, idx])))
        log(f"epoch {ep + 1}/{epochs}: train loss {tot / max(1, x.shape[1] // batch):.4f}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny run for smoke tests")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    from evrtrl.neuromorphic import map_to_hardware

    T = 15 if a.quick else 40
    n_tr, n_te, epochs, batch = (16, 16, 1, 16) if a.quick else (192, 128, 2, 32)
    torch.set_num_threads(2)
    x_tr, y_tr = make_task(n_tr, T=T, seed=a.seed)
    x_te, y_te = make_task(n_te, T=T, seed=a.seed + 1)
    model, readout = build(a.seed)
    t0 = time.perf_counter()
    train(model, readout, x_tr, y_tr, epochs=epochs, batch=batch)
    print(f"training: {time.perf_counter() - t0:.1f} s ({epochs} epochs x {n_tr} sequences, T={T})")

    def predict(spikes):  # host-side readout of the output spike counts
        return readout(spikes.sum(0).to(readout.weight.dtype)).argmax(-1)

    def loss_fn(yt, t):
        if t < T // 2:
            return 0.0
        return torch.nn.functional.cross_entropy(readout(yt.to(readout.weight.dtype)) * 4.0, y_te) / (T - T // 2)

    reports = {}
    for name in TARGETS:
        rep = map_to_hardware(model, name, x=x_te, labels=y_te.numpy(), loss_fn=loss_fn, predict=predict)
        reports[name] = rep
        print()
        print(rep.summary())
    return reports


if __name__ == "__main__":
    main()
