r"""Linear readout of a recurrent layer's output: :math:`o_t = V y_t + c`.

The readout is feed-forward, so its gradient is exact from the current step alone; the
online learner trains it beside the recurrent parameters.
"""
from __future__ import annotations

import math

import torch

from evrtrl.layer import check_sizes

__all__ = ["Readout"]


class Readout(torch.nn.Linear):
    """``Readout(hidden_size, n_out)``: a ``torch.nn.Linear`` with a small uniform init."""

    def __init__(self, hidden_size: int, n_out: int, *, dtype=torch.float32, device=None) -> None:
        check_sizes("Readout", hidden_size, n_out)
        super().__init__(hidden_size, n_out, dtype=dtype, device=device)
        bound = 1.0 / math.sqrt(hidden_size)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            self.bias.zero_()
