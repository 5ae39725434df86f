"""``evrtrl demo``: online exact RTRL with the event engine on the rotation task.

An EGRU (16 units, 2 inputs) with a linear readout of its last output learns the
direction of rotation of a spiralling 2-D trajectory (``evrtrl.training.data``), with
exact gradients from the event-driven engine and one Adam step per batch of sequences.
It prints the activity statistics and the counted multiply-adds against dense RTRL
for the same model and ends with ``test accuracy: NN.N%``.

Early stopping is off by default (every epoch runs). With ``early_stop=True`` a validation
split is carved from the training set (its last 128 sequences, not trained on) and
training stops once the validation accuracy reaches 99.5 % (from epoch 5 on); the test
set is only ever used for the final figure.
"""
from __future__ import annotations

import time

import torch
from tqdm import tqdm


def run(*, epochs: int = 30, hidden: int = 16, batch: int = 64, seed: int = 0,
        progress: bool = True, early_stop: bool = False) -> float:
    """Train and return the test accuracy in [0, 1]."""
    import evrtrl
    from evrtrl.training.data import rotation_task
    from evrtrl.models import EGRU, Readout, Triangle

    torch.manual_seed(seed)
    train, test = rotation_task(1024, seed=seed), rotation_task(512, seed=seed + 1)
    x_tr, y_tr = train.x.transpose(0, 1).float(), train.y
    x_te, y_te = test.x.transpose(0, 1).float(), test.y
    if early_stop:  # validation split carved from the training set
        x_va, y_va = x_tr[:, -128:], y_tr[-128:]
        x_tr, y_tr = x_tr[:, :-128], y_tr[:-128]
    T = x_tr.shape[0]
    model = EGRU(2, hidden, theta_init=0.1, pseudo_derivative=Triangle(0.7, 0.5),
                 generator=torch.Generator().manual_seed(seed))
    readout = Readout(hidden, 2)
    opt = torch.optim.Adam(list(model.parameters()) + list(readout.parameters()), lr=0.02)

    def make_loss(labels):
        def loss(y, t):
            if t != T - 1:
                return None
            return torch.nn.functional.cross_entropy(readout(y), labels)
        return loss

    n_batches = x_tr.shape[1] // batch
    start = time.perf_counter()
    macs_event = 0
    alpha, beta = [], []
    bar = tqdm(total=epochs * n_batches, disable=not progress, desc="demo", unit="batch")
    for epoch in range(epochs):
        perm = torch.randperm(x_tr.shape[1])
        for b in range(n_batches):
            idx = perm[b * batch:(b + 1) * batch]
            learner = evrtrl.OnlineLearner(model, opt, make_loss(y_tr[idx]), k=T,
                                           method="event", extra_parameters=readout.parameters())
            losses = learner.run(x_tr[:, idx])
            st = learner.stats[-1]
            macs_event += st.total_macs
            alpha.append(sum(st.alpha) / len(st.alpha))
            beta.append(sum(st.beta) / len(st.beta))
            bar.set_postfix(loss=f"{losses[-1]:.3f}", alpha=f"{alpha[-1]:.2f}", beta=f"{beta[-1]:.2f}")
            bar.update()
        if early_stop and epoch >= 4 and _accuracy(model, readout, x_va, y_va) >= 0.995:
            break
    bar.close()
    elapsed = time.perf_counter() - start
    acc = _accuracy(model, readout, x_te, y_te)
    # the dense engine's count for one batch with the same model, for the comparison
    dense = evrtrl.gradients(model, x_tr[:, :batch], make_loss(y_tr[:batch]), method="dense")
    event = evrtrl.gradients(model, x_tr[:, :batch], make_loss(y_tr[:batch]), method="event")
    print(f"trained {epoch + 1} epochs in {elapsed:.1f} s on {torch.get_num_threads()} threads")
    print(f"output activity alpha {sum(alpha) / len(alpha):.3f}, active fraction beta "
          f"{sum(beta) / len(beta):.3f} (mean over training)")
    print(f"multiply-adds per batch: event {event.stats.total_macs:,} vs dense RTRL "
          f"{dense.stats.total_macs:,} ({dense.stats.total_macs / event.stats.total_macs:.1f}x fewer)")
    print(f"test accuracy: {100 * acc:.1f}%")
    return acc


@torch.no_grad()
def _accuracy(model, readout, x, labels) -> float:
    import evrtrl

    y = evrtrl.simulate(model, x).outputs[-1]
    return float((readout(y).argmax(-1) == labels).float().mean())
