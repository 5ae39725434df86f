"""``evrtrl plan``: the influence memory per process of a model, batch and process grid,
predicted before anything is allocated (:func:`evrtrl.memory.plan_memory`).

>>> from evrtrl.training.plan import sizes_for
>>> from evrtrl.memory import plan_memory
>>> s = sizes_for("egru", inputs=64, hidden=1024, density=0.2)
>>> round(plan_memory(s, 16, columns=16).influence_bytes / 2**30, 2)   # GiB per process
2.57
"""
from __future__ import annotations

import argparse
import json

import torch

from evrtrl.cli_contract import fraction, positive_float, positive_int
from evrtrl.errors import MemoryBudgetError
from evrtrl.memory import LayerSize, available_memory, check_memory, format_bytes, plan_memory
from evrtrl.models import EGRU, LIF

__all__ = ["sizes_for", "register", "cmd_plan"]

_CELLS = {"egru": EGRU, "lif": LIF}


def sizes_for(model: str, *, inputs: int, hidden: int, layers: int = 1,
              density: float = 1.0) -> list[LayerSize]:
    """Layer sizes of the model ``evrtrl train`` would build (masks of ``density`` drawn as
    :func:`evrtrl.models.random_masks` draws them), without building it."""
    cls = _CELLS[model]
    out, d = [], inputs
    for _ in range(layers):
        shapes = cls.weight_shapes(d, hidden)
        weights = [a * b for a, b in shapes.values()]
        units = hidden * len(cls.unit_parameters)
        live = sum(w if density >= 1 else max(1, round(density * w)) for w in weights)
        out.append(LayerSize(hidden, cls.state_size, sum(weights) + units, live + units))
        d = hidden
    return out


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plan", help="predict the influence memory per process (no allocation)",
        description="Influence-matrix bytes per process for a model, batch and data x columns "
                    "process grid; exits 1 when the plan exceeds the memory available here.")
    p.add_argument("--model", choices=sorted(_CELLS), default="egru")
    p.add_argument("--inputs", type=positive_int, default=64, help="input channels d")
    p.add_argument("--hidden", type=positive_int, default=1024, help="units per layer n")
    p.add_argument("--layers", type=positive_int, default=1)
    p.add_argument("--density", type=fraction, default=1.0, help="fraction of live weights")
    p.add_argument("--batch", type=positive_int, default=16, help="global batch")
    p.add_argument("--method", choices=("event", "dense", "dense-live"), default="event")
    p.add_argument("--data-procs", type=positive_int, default=1, help="processes on the data axis")
    p.add_argument("--shard-columns", type=positive_int, default=1, help="processes on the column axis")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--available", type=positive_float, default=None,
                   help="memory per process in GiB (default: what this machine has available)")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    # a library error (e.g. more column shards than columns) is one error: line, rc 2 (cli_contract)
    sizes = sizes_for(args.model, inputs=args.inputs, hidden=args.hidden,
                      layers=args.layers, density=args.density)
    plan = plan_memory(sizes, args.batch, args.method, data=args.data_procs,
                       columns=args.shard_columns,
                       dtype=torch.float64 if args.dtype == "float64" else torch.float32)
    avail = int(args.available * 2**30) if args.available is not None else available_memory()
    try:
        check_memory(plan, available=avail)
        verdict = None
    except MemoryBudgetError as exc:
        verdict = str(exc)
    if args.json:
        print(json.dumps({"influence_bytes": plan.influence_bytes,
                          "working_bytes": plan.working_bytes, "index_bytes": plan.index_bytes,
                          "total_bytes": plan.total_bytes,
                          "unsharded_influence_bytes": plan.unsharded_influence_bytes,
                          "columns_per_layer": list(plan.layer_columns),
                          "local_batch": plan.local_batch, "available_bytes": avail,
                          "fits": verdict is None}))
    else:
        print(plan.describe())
        print(f"available: {format_bytes(avail) if avail is not None else 'unknown'}: "
              + ("fits" if verdict is None else "does NOT fit"))
        if verdict:
            print(verdict)
    return 0 if verdict is None else 1
