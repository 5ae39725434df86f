r"""The training loop: exact online RTRL over a data set, with checkpoints and resume.

Loss and prediction (``loss="mean"``, the default): a linear readout
:math:`o_t = V y_t + c` of the last layer's output at every step and

.. math:: L = \frac{1}{B}\sum_{b} \frac{1}{T}\sum_{t} \mathrm{CE}(o_{t,b}, \ell_b),
          \qquad \hat\ell_b = \arg\max_k \sum_t o_{t,b,k}.

Activity-sparse outputs are zero at most steps, so a loss on the last step alone
(``loss="last"``: :math:`\mathrm{CE}(o_{T-1}, \ell)`, prediction from :math:`o_{T-1}`)
often sees no signal; ``mean`` is what works on the synthetic tasks (docs/training.md).

Updates: :class:`evrtrl.OnlineLearner` with ``k`` steps between updates (``k=0``: one
update at the end of each batch of sequences, i.e. the exact gradient of the batch loss;
``k >= 1``: online RTRL, weights change while the streams run). Method ``event`` (default),
``dense`` / ``dense-live`` (reference engines) or ``bptt`` (truncated to windows of k).

Resume: the checkpoint holds the model, readout, optimizer state, counters (epoch, next
batch, global batch count, updates), the torch RNG state and every metrics record so
far. The data order of epoch ``e`` is a permutation drawn from a generator seeded with
``(seed, e)``, so it needs no state. A run resumed from a checkpoint therefore ends with
the same weights, bit for bit, as an uninterrupted one (tests/training).
"""
from __future__ import annotations

import inspect
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from evrtrl.api import METHODS, simulate
from evrtrl.atomic import atomic_write_text
from evrtrl.errors import ConfigError, UnknownMethodError
from evrtrl.memory import check_memory, plan_memory
from evrtrl.models import Readout, Stack, Triangle, cell_spec, random_masks, registered_cells
from evrtrl.models.modelfile import save_model
from evrtrl.network import layers_of
from evrtrl.online import OnlineLearner
from evrtrl.regularizers import ActivityRegularizer
from evrtrl.training import distributed as ddp
from evrtrl.training import sharded
from evrtrl.training.checkpoint import load_checkpoint, save_checkpoint
from evrtrl.training.data import SequenceData, learner_batch, open_data, parse_data_spec
from evrtrl.training.metrics import (
    MetricsLog, data_lengths, dense_rtrl_macs, measure_beta, sequence_beta,
)

__all__ = ["TrainConfig", "TrainResult", "train", "build_model", "make_loss", "predict_logits"]

_DT = {"float32": torch.float32, "float64": torch.float64}
#: config fields that are never cell keywords, even where a cell's constructor has that name
_NOT_CELL_OPTIONS = {"dtype", "input_size", "hidden_size", "masks", "pseudo_derivative", "generator", "device"}


#: per-model defaults of the sparsity knobs. EGRU: chosen by measurement
#: (docs/training.md, "Activity-sparse training"): a narrow triangle and the target-rate
#: activity regulariser. LIF: not measured; the former defaults (no regulariser).
SPARSE_DEFAULTS: dict[str, dict[str, float]] = {
    "egru": {"pd_width": 0.01, "activity": 6.0, "activity_target": 0.03, "activity_warmup": 5.0},
    "lif": {"pd_width": 0.5, "activity": 0.0, "activity_target": 0.0, "activity_warmup": 0.0},
}
#: a registered cell without measured defaults: the 0.1.0 configuration, no regulariser
GENERIC_DEFAULTS: dict[str, float] = {"pd_width": 0.5, "activity": 0.0, "activity_target": 0.0,
                                      "activity_warmup": 0.0}


@dataclass
class TrainConfig:
    """Everything that defines a run (stored as ``config.json`` in the run directory)."""

    data: str = "synthetic:rotation"
    model: str = "egru"  # a registered cell: "egru", "lif", ... (evrtrl.models.registered_cells)
    hidden: int = 32
    layers: int = 1
    density: float = 1.0
    method: str = "event"
    epochs: int = 1
    batch: int = 16
    lr: float = 0.01
    k: int = 0  # 0: one update per batch (end of sequence)
    dt_us: int | None = None
    seed: int = 0
    loss: str = "mean"  # "mean" | "last"
    dtype: str = "float32"
    # cell hyper-parameters; None: the model's measured default (SPARSE_DEFAULTS)
    theta_init: float = 0.1
    pd_gamma: float = 0.7
    pd_width: float | None = None
    # activity regulariser on every layer's outputs (evrtrl.regularizers.ActivityRegularizer)
    activity: float | None = None
    activity_target: float | None = None
    # epochs over which the regulariser's strength ramps linearly from 0 to ``activity``
    activity_warmup: float | None = None
    tau_mem: float = 0.02
    tau_syn: float = 0.005
    v_th: float = 1.0
    reset: str = "zero"
    integration: str = "exact"
    weight_scale: float = 4.0
    cell: dict[str, Any] = field(default_factory=dict)  # further cell keywords (hyper-parameters)
    # run control
    checkpoint_every: int = 0  # batches; 0: only at epoch end
    log: tuple[str, ...] = ("csv", "json")
    eval_each_epoch: bool = True
    eval_batch: int = 64
    max_batches: int | None = None  # per epoch, for quick runs
    shard_columns: int = 1  # influence-column shards (evrtrl.training.sharded); grid data x this
    shard_partition: str = "strided"  # evrtrl.shards: "strided" | "contiguous"

    def validate(self) -> None:
        """Check every field; fill the model's defaults where a field is None."""
        parse_data_spec(self.data)
        keys = [c.lower() for c in registered_cells()]
        if self.model not in keys:
            raise UnknownMethodError(f"--model {self.model!r}: expected one of {keys}")
        for name, value in SPARSE_DEFAULTS.get(self.model, GENERIC_DEFAULTS).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.method not in METHODS:
            raise UnknownMethodError(f"--method {self.method!r}: expected one of {list(METHODS)}")
        if self.loss not in ("mean", "last"):
            raise UnknownMethodError(f"loss {self.loss!r}: expected 'mean' or 'last'")
        if self.dtype not in _DT:
            raise UnknownMethodError(f"--dtype {self.dtype!r}: expected one of {sorted(_DT)}")
        for name in ("hidden", "layers", "epochs", "batch"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.k < 0:
            raise ConfigError(f"--k must be >= 0 (0: one update per sequence), got {self.k}")
        if self.activity < 0 or self.activity_target < 0:
            raise ConfigError(f"--activity {self.activity} and --activity-target "
                              f"{self.activity_target} must be >= 0")
        if not (self.activity_warmup >= 0):
            raise ConfigError(f"--activity-warmup {self.activity_warmup} must be >= 0 (epochs)")
        if self.pd_width <= 0 or self.pd_gamma <= 0:
            raise ConfigError(f"--width {self.pd_width} and --gamma {self.pd_gamma} must be > 0")
        if not (0 < self.density <= 1):
            raise ConfigError(f"--density must be in (0, 1], got {self.density}")
        bad = set(self.log) - {"csv", "json"}
        if bad:
            raise UnknownMethodError(f"--log {sorted(bad)}: expected csv and/or json")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if "pd_width" in kw and "activity" not in kw:  # a run stored before the regulariser
            kw.update(activity=0.0, activity_target=0.0)
        if "pd_width" in kw and "activity_warmup" not in kw:  # stored before the warm-up
            kw["activity_warmup"] = 0.0
        if "log" in kw:
            kw["log"] = tuple(kw["log"])
        return cls(**kw)


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    run_dir: Path
    model: Any
    readout: Any
    batches: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0


# ----------------------------------------------------------------------- building
def build_model(cfg: TrainConfig, n_inputs: int, n_classes: int, dt_us: int | None):
    """The recurrent model and its readout, from the seed (deterministic).

    The cell is ``cell_spec(cfg.model)`` from the registry (:mod:`evrtrl.models.registry`).
    Its keywords are the config fields named like a constructor keyword of the cell
    (``theta_init``, ``tau_mem``, ``reset``, ``weight_scale``, ...), then ``cfg.cell``; a cell
    with a ``dt`` hyper-parameter gets the data's time step (``dt_us``, default 1 ms).
    """
    cfg.validate()  # fills the model's defaults
    spec = cell_spec(cfg.model)
    dtype = _DT[cfg.dtype]
    g = torch.Generator().manual_seed(cfg.seed)
    pd = Triangle(gamma=cfg.pd_gamma, width=cfg.pd_width)
    accepted = set(inspect.signature(spec.cls).parameters)
    options = {f.name: getattr(cfg, f.name) for f in fields(cfg)
               if f.name in accepted and f.name not in _NOT_CELL_OPTIONS}
    if "dt" in spec.hyper_names:
        options["dt"] = (dt_us or 1000) * 1e-6
    options.update(cfg.cell)
    config = {k: options.pop(k) for k in spec.hyper_names if k in options}
    layers = []
    d = n_inputs
    for i in range(cfg.layers):
        masks = (random_masks(spec.weight_shapes(d, cfg.hidden, config), cfg.density, seed=cfg.seed * 1000 + i)
                 if cfg.density < 1 else None)
        layers.append(spec.from_config(d, cfg.hidden, config, pseudo_derivative=pd, masks=masks,
                                       dtype=dtype, generator=g, **options))
        d = cfg.hidden
    model = layers[0] if len(layers) == 1 else Stack(*layers)
    torch.manual_seed(cfg.seed)
    readout = Readout(cfg.hidden, n_classes, dtype=dtype)
    return model, readout


class _Loss:
    """``loss_fn(y_t, t)`` for :class:`OnlineLearner`; collects logits for accuracy."""

    def __init__(self, readout, labels: torch.Tensor, T: int, mode: str, global_batch: int):
        self.readout, self.labels, self.T, self.mode = readout, labels, T, mode
        self.scale = 1.0 / global_batch / (T if mode == "mean" else 1)
        self.logits: torch.Tensor | None = None

    def __call__(self, y: torch.Tensor, t: int):
        if self.mode == "last" and t != self.T - 1:
            return None
        o = self.readout(y)
        d = o.detach()
        self.logits = d if self.logits is None else self.logits + d
        return torch.nn.functional.cross_entropy(o, self.labels, reduction="sum") * self.scale


def make_loss(readout, labels, T, mode="mean", global_batch=None) -> _Loss:
    return _Loss(readout, labels, T, mode, global_batch or labels.numel())


@torch.no_grad()
def predict_logits(model, readout, x: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """Summed (``mean``) or last-step (``last``) readout logits ``(B, classes)``."""
    out = simulate(model, x.to(readout.weight.dtype)).outputs  # (T, B, n)
    if mode == "last":
        return readout(out[-1])
    return readout(out).sum(0)


def _accuracy(model, readout, data: SequenceData, mode: str, batch: int) -> float:
    correct = 0
    dtype = readout.weight.dtype
    for lo in range(0, len(data), batch):
        idx = list(range(lo, min(len(data), lo + batch)))
        x, y = data.batch(idx, dtype)
        correct += int((predict_logits(model, readout, x, mode).argmax(-1) == y).sum())
    return correct / max(1, len(data))


def _test_beta(model, data: SequenceData, batch: int, dtype) -> dict[str, float]:
    """Per-sequence beta on the test split, from the event engine (forward only)."""
    batches = (data.batch(list(range(lo, min(len(data), lo + batch))), dtype)[0]
               for lo in range(0, len(data), batch))
    return {"test_" + k: v for k, v in measure_beta(model, batches).items()}


def warmup_factor(warmup: float, progress: float) -> float:
    """The regulariser's ramp: ``min(1, progress / warmup)`` (1 when ``warmup`` is 0).

    ``progress`` is the training time in epochs at the start of a batch
    (``epoch + batch / batches_per_epoch``); the strength of a batch's regulariser is
    ``activity * warmup_factor(...)``, constant within the batch, so every update's
    gradient is the exact gradient of that batch's loss.
    """
    return 1.0 if warmup <= 0 else min(1.0, progress / warmup)


def _epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str))


# ------------------------------------------------------------------------- train
def train(
    cfg: TrainConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
    callbacks: Sequence[Callable[[dict[str, Any]], None]] = (),
    train_data: SequenceData | None = None,
    test_data: SequenceData | None = None,
    allow_memory: bool = False,
) -> TrainResult:
    """Train per ``cfg`` into the run directory ``out`` (see module docstring).

    ``resume=True`` continues from ``out/checkpoint.h5`` with the run's stored
    ``config.json`` (only ``epochs`` may be raised). ``callbacks`` are called after each
    batch (after any checkpoint) with the batch record; an exception raised there stops
    the run as a kill would. Runs distributed when a ``torch.distributed`` group is
    initialised (:mod:`evrtrl.training.distributed`); ``cfg.shard_columns > 1`` splits the
    influence columns too (:mod:`evrtrl.training.sharded`). The influence memory per process
    is planned first and a plan above the memory available is refused unless ``allow_memory``.
    """
    t_start = time.perf_counter()
    rank = ddp.rank_and_world()[0]
    run = Path(out)
    ckpt_path, cfg_path = run / "checkpoint.h5", run / "config.json"
    state = None
    if resume and ckpt_path.exists():
        stored = TrainConfig.from_dict(json.loads(cfg_path.read_text()))
        if cfg.epochs > stored.epochs:
            stored.epochs = cfg.epochs
        cfg = stored
    cfg.validate()
    grid = sharded.setup_grid(cfg.shard_columns, cfg.shard_partition)
    if grid.columns > 1 and cfg.method == "bptt":
        raise ConfigError("--shard-columns splits the RTRL influence matrix; --method bptt has none")
    if rank == 0:
        run.mkdir(parents=True, exist_ok=True)
    ddp.barrier()

    data = train_data or open_data(cfg.data, "train", dt_us=cfg.dt_us)
    if test_data is None and cfg.eval_each_epoch:
        test_data = open_data(cfg.data, "test", dt_us=cfg.dt_us)
    if cfg.batch < grid.data:
        raise ConfigError(f"--batch {cfg.batch} is smaller than the {grid.data} data processes")

    counters = {"epoch": 0, "batch": 0, "global_batch": 0, "updates": 0, "wall_s": 0.0,
                "train_s": 0.0}
    batch_log = MetricsLog(run, "batches", cfg.log if rank == 0 else ())
    epoch_log = MetricsLog(run, "epochs", cfg.log if rank == 0 else ())
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        model, readout = state.model, state.readout
        counters.update(state.counters)
        if "torch" in state.rng:
            torch.set_rng_state(state.rng["torch"])
        records = state.metrics
        batch_log.reset([r for r in records if r.get("kind") == "batch"])
        epoch_log.reset([r for r in records if r.get("kind") == "epoch"])
    else:
        model, readout = build_model(cfg, data.n_inputs, data.n_classes, data.dt_us)
        if rank == 0:
            batch_log.reset([])
            epoch_log.reset([])
    if rank == 0:
        _write_json(cfg_path, {**asdict(cfg), "data_info": data.describe()})

    params = list(model.parameters()) + list(readout.parameters())
    base_opt = torch.optim.Adam(params, lr=cfg.lr)
    if state is not None:
        base_opt.load_state_dict(state.optimizer_state)
    optimizer = grid.wrap_optimizer(base_opt, model, cfg.method)
    if cfg.method != "bptt":
        check_memory(plan_memory(model, cfg.batch, cfg.method, data=grid.data,
                                 columns=grid.columns), allow=allow_memory)

    n_batches = math.ceil(len(data) / cfg.batch)
    if cfg.max_batches:
        n_batches = min(n_batches, cfg.max_batches)
    total = cfg.epochs * n_batches
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=counters["epoch"] * n_batches + counters["batch"],
                   desc=f"train {cfg.model}-{cfg.method}", unit="batch", dynamic_ncols=True)
    dtype = _DT[cfg.dtype]
    wall0 = counters["wall_s"]
    t_run = time.perf_counter()

    def checkpoint() -> None:
        counters["wall_s"] = wall0 + time.perf_counter() - t_run
        sharded.sync_state(optimizer)  # owners' optimizer state (collective)
        if rank == 0:
            save_checkpoint(ckpt_path, model, readout, base_opt, counters=dict(counters),
                            rng={"torch": torch.get_rng_state()},
                            metrics=batch_log.records + epoch_log.records, config=asdict(cfg))

    while counters["epoch"] < cfg.epochs:
        epoch = counters["epoch"]
        train_s = 0.0  # this epoch's training loop only (no data building, no evaluation)
        order = _epoch_order(cfg.seed, epoch, len(data))
        while counters["batch"] < n_batches:
            b = counters["batch"]
            global_idx = order[b * cfg.batch:(b + 1) * cfg.batch]
            idx = grid.data_shard(global_idx)
            x, labels = learner_batch(data, idx, dtype, cfg.method)  # sparse for the event engine
            T = x.shape[0]
            loss_fn = make_loss(readout, labels, T, cfg.loss, len(global_idx))
            strength = cfg.activity * warmup_factor(cfg.activity_warmup, epoch + b / n_batches)
            reg = (ActivityRegularizer(strength, cfg.activity_target,
                                       scale=1.0 / (len(global_idx) * T))
                   if strength > 0 else None)
            learner = OnlineLearner(model, optimizer, loss_fn, k=cfg.k or T, method=cfg.method,
                                    extra_parameters=readout.parameters(), layer_loss=reg,
                                    engine_options=grid.engine_options(allow_memory))
            t0 = time.perf_counter()
            losses = learner.run(x)
            dt_batch = time.perf_counter() - t0
            train_s += dt_batch
            counters["train_s"] += dt_batch
            loss_local = sum(v for v in losses if not math.isnan(v))
            correct = int((loss_fn.logits.argmax(-1) == labels).sum()) if loss_fn.logits is not None else 0
            st = learner.stats[-1].summary() if learner.stats else None
            loss_steps = T if cfg.loss == "mean" else 1
            macs_dense = dense_rtrl_macs(model, len(idx), T, loss_steps)
            # beta per sequence and layer over the steps that carry data (event engine only)
            n_layers = len(layers_of(model))
            if learner.active is not None:
                lengths = data_lengths(x)
                ok = lengths > 0
                per_l, overall = sequence_beta(learner.active, lengths,
                                               [r.layer.hidden_size for r in layers_of(model)])
                beta_sums = [float(overall[ok].sum())] + [float(v) for v in per_l[:, ok].sum(1)]
                n_seq = float(ok.sum())
            else:
                beta_sums, n_seq = [0.0] * (n_layers + 1), 0.0
            vals = [loss_local, correct, macs_dense,
                    st["macs_total"] if st else float("nan"),
                    sum(learner.layer_losses), n_seq] + beta_sums + [
                    st["alpha"] if st else float("nan"), st["beta"] if st else float("nan"),
                    st["gamma_final"] if st else float("nan"),
                    learner.engine.influence_density() if st else float("nan")]
            vals = sharded.reduce_metrics(grid, vals)
            vals[3] = sharded.sum_over_columns(grid, vals[3:4])[0]  # the shards split the work
            loss_g, correct_g, macs_d, macs_e, reg_g, n_seq_g = vals[:6]
            betas = [v / n_seq_g if n_seq_g else float("nan") for v in vals[6:7 + n_layers]]
            alpha, beta_all_steps, gamma, mdens = (v / grid.data for v in vals[7 + n_layers:])
            counters["batch"] += 1
            counters["global_batch"] += 1
            counters["updates"] += learner.updates
            rec = {
                "kind": "batch", "epoch": epoch, "batch": b, "global_batch": counters["global_batch"],
                "updates": counters["updates"], "loss": loss_g, "reg_loss": reg_g,
                "activity": strength,
                "acc": correct_g / len(global_idx),
                "alpha": alpha, "beta": betas[0],
                **{f"beta_l{l}": v for l, v in enumerate(betas[1:])},
                "beta_all_steps": beta_all_steps, "gamma": gamma, "m_density": mdens,
                "macs_event": macs_e, "macs_dense": macs_d,
                "saving": macs_d / macs_e if macs_e and macs_e == macs_e else float("nan"),
                "batch_s": dt_batch,
            }
            if rank == 0:
                batch_log.write(rec)
            if cfg.checkpoint_every and counters["global_batch"] % cfg.checkpoint_every == 0 \
                    and counters["batch"] < n_batches:
                checkpoint()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_g:.3f}", acc=f"{rec['acc']:.2f}", alpha=f"{alpha:.3f}",
                                beta=f"{betas[0]:.3f}", saving=f"{rec['saving']:.1f}x")
            for cb in callbacks:
                cb(rec)
        # epoch end
        recs = [r for r in batch_log.records if r["epoch"] == epoch] if rank == 0 else []
        erec: dict[str, Any] = {"kind": "epoch", "epoch": epoch,
                                "updates": counters["updates"],
                                "wall_s": wall0 + time.perf_counter() - t_run}
        if recs:
            keys = ["loss", "reg_loss", "acc", "alpha", "beta", "beta_all_steps", "gamma", "m_density",
                    "saving"] + [k for k in recs[0] if k.startswith("beta_l")]
            for k in keys:
                erec[k] = sum(r[k] for r in recs) / len(recs)
        erec["train_s"] = train_s
        if cfg.eval_each_epoch and test_data is not None:
            erec["test_acc"] = _accuracy(model, readout, test_data, cfg.loss, cfg.eval_batch)
            if cfg.model == "egru" or cfg.method == "event":
                erec.update(_test_beta(model, test_data, cfg.eval_batch, dtype))
        counters["epoch"] += 1
        counters["batch"] = 0
        if rank == 0:
            epoch_log.write(erec)
            save_model(model, run / "model.h5", readout=readout, epoch=epoch + 1, loss_mode=cfg.loss,
                       data=cfg.data, test_acc=erec.get("test_acc"))
        checkpoint()
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - t_start
    if rank == 0:
        _write_json(run / "summary.json", {
            "epochs": counters["epoch"], "updates": counters["updates"],
            "wall_s": wall0 + time.perf_counter() - t_run,
            # the training loop alone (OnlineLearner.run of every batch): no data loading,
            # no evaluation, no checkpoints
            "train_wall_s": counters["train_s"],
            "last_epoch": epoch_log.records[-1] if epoch_log.records else None,
        })
    ddp.barrier()
    return TrainResult(run, model, readout, list(batch_log.records), list(epoch_log.records), wall)
