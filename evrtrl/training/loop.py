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

Runs that cannot mix (:mod:`evrtrl.training.rundir`): the run directory is locked for the
run; a fresh run refuses a non-empty directory unless ``overwrite``; a random run id is
shared by ``config.json``, every checkpoint and ``model.h5``, and ``resume`` refuses a
checkpoint of another run. On resume the stored ``config.json`` rules: options in
:data:`RESUME_MAY_CHANGE` may differ from it (each change is stated in
``TrainResult.notes``), any other difference is refused with :class:`ConfigError`. The
previous checkpoint is kept as ``checkpoint.prev.h5``; when ``checkpoint.h5`` is unreadable
the run resumes from it, and says so.

Finite numbers: a NaN or inf gradient or weight stops the run with
:class:`~evrtrl.errors.NonFiniteError` naming the parameter, the epoch, the batch and the
update (checked once per update by :class:`evrtrl.OnlineLearner`); non-finite weights are
never checkpointed.
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

from evrtrl.api import METHODS, make_engine, simulate
from evrtrl.atomic import atomic_write_text
from evrtrl.errors import ConfigError, EvrtrlError, FormatError, NonFiniteError, RunError, UnknownMethodError
from evrtrl.memory import check_memory, plan_memory
from evrtrl.models import Readout, Stack, Triangle, cell_spec, random_masks, registered_cells
from evrtrl.models.modelfile import save_model
from evrtrl.network import layers_of
from evrtrl.online import OnlineLearner
from evrtrl.regularizers import ActivityRegularizer
from evrtrl.training import distributed as ddp
from evrtrl.training import sharded
from evrtrl.training.checkpoint import Checkpoint, load_checkpoint, previous_path, save_checkpoint
from evrtrl.training.data import SequenceData, learner_batch, open_data, parse_data_spec
from evrtrl.training.metrics import (
    MetricsLog, data_lengths, dense_rtrl_macs, measure_beta, sequence_beta,
)
from evrtrl.training.rundir import new_run_id, prepare_run_dir

__all__ = ["TrainConfig", "TrainResult", "train", "build_model", "make_loss", "predict_logits",
           "load_run_config", "RESUME_MAY_CHANGE"]

#: options that may differ from the stored config.json on resume (each change is stated):
#: run control and placement; the process grid's column split leaves the exact gradient
#: unchanged (up to summation order), like the number of processes
RESUME_MAY_CHANGE = ("epochs", "checkpoint_every", "eval_each_epoch", "eval_batch", "device",
                     "shard_columns", "shard_partition")

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
    device: str = "cpu"

    def validate(self) -> None:
        """Check every field; fill the model's defaults where a field is None."""
        spec = parse_data_spec(self.data)
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
        for name in ("hidden", "layers", "epochs", "batch", "eval_batch", "shard_columns"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.k < 0:
            raise ConfigError(f"--k must be >= 0 (0: one update per sequence), got {self.k}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"--checkpoint-every must be >= 0 (0: at epoch ends only), got {self.checkpoint_every}")
        if self.max_batches is not None and self.max_batches < 1:
            raise ConfigError(f"--max-batches must be >= 1 (or absent: every batch), got {self.max_batches}")
        if self.dt_us is not None and self.dt_us < 1:
            raise ConfigError(f"--dt-us must be >= 1 microsecond, got {self.dt_us}")
        if not (0 < self.density <= 1):
            raise ConfigError(f"--density must be in (0, 1], got {self.density}")
        positive = {"lr": "--lr", "pd_gamma": "--gamma", "pd_width": "--width", "tau_mem": "tau_mem",
                    "tau_syn": "tau_syn", "weight_scale": "weight_scale"}
        for name, flag in positive.items():
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"{flag} must be a finite number > 0, got {v}")
        for name, flag in {"activity": "--activity", "activity_target": "--activity-target",
                           "activity_warmup": "--activity-warmup"}.items():
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"{flag} must be a finite number >= 0, got {v}")
        for name, flag in {"theta_init": "--theta-init", "v_th": "v_th"}.items():
            if not math.isfinite(float(getattr(self, name))):
                raise ConfigError(f"{flag} must be finite, got {getattr(self, name)}")
        bad = set(self.log) - {"csv", "json"}
        if bad:
            raise UnknownMethodError(f"--log {sorted(bad)}: expected csv and/or json")
        if self.dt_us is not None:
            if spec.kind == "synthetic" and "dt" not in cell_spec(self.model).hyper_names:
                raise ConfigError(f"--dt-us has no effect here: synthetic data is not binned and a "
                                  f"{self.model} cell has no time step; drop it (it sets the binning of "
                                  "shd/nmnist data and the LIF dt)")
            if "dt_us" in spec.options and spec.options["dt_us"] != str(self.dt_us):
                raise ConfigError(f"--dt-us {self.dt_us} contradicts dt_us={spec.options['dt_us']} in --data "
                                  f"{self.data}; give the step once")
        try:
            device = torch.device(self.device)
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(f"--device {self.device!r}: not a torch device (cpu, cuda, cuda:1, ...)") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--device {self.device}: torch finds no CUDA device on this machine")

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


def load_run_config(run_dir: str | os.PathLike) -> tuple[TrainConfig, str | None]:
    """``(config, run id)`` stored in ``run_dir/config.json`` (run id None: written by evrtrl 0.1.0)."""
    path = Path(run_dir) / "config.json"
    try:
        d = json.loads(path.read_text())
    except UnicodeDecodeError as exc:
        raise FormatError(f"{path}: not UTF-8 text") from exc
    except ValueError as exc:
        raise FormatError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(d, dict):
        raise FormatError(f"{path}: holds a JSON {type(d).__name__}, expected an object")
    try:
        cfg = TrainConfig.from_dict(d)
    except TypeError as exc:
        raise FormatError(f"{path}: not a training configuration ({exc})") from exc
    run_id = d.get("run_id")
    return cfg, (str(run_id) if run_id is not None else None)


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    run_dir: Path
    model: Any
    readout: Any
    batches: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    run_id: str | None = None
    #: what the run stated on the way (resume changes, checkpoint fallback)
    notes: list[str] = field(default_factory=list)


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
        options["dt"] = (dt_us or cfg.dt_us or 1000) * 1e-6
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
    return model.to(cfg.device), readout.to(cfg.device)


class _Loss:
    """``loss_fn(y_t, t)`` for :class:`OnlineLearner`; collects logits for accuracy."""

    def __init__(self, readout, labels: torch.Tensor, T: int, mode: str, global_batch: int,
                 activity: bool = False):
        self.readout, self.labels, self.T, self.mode = readout, labels, T, mode
        self.scale = 1.0 / global_batch / (T if mode == "mean" else 1)
        self.logits: torch.Tensor | None = None
        # output activity alpha (fraction of non-zero outputs, summed over steps), for methods
        # without engine statistics (bptt)
        self.activity = activity
        self.active: torch.Tensor | float = 0.0
        self.steps = 0
        self.rows = torch.arange(labels.numel(), device=labels.device)
        if isinstance(readout, torch.nn.Linear) and readout.bias is not None:
            self.value_and_grad = self._closed_form  # the engines' closed-form path

    def _step(self, y: torch.Tensor, t: int) -> bool:
        """Count the step's output activity (when asked); whether step ``t`` has a loss."""
        if self.activity:
            self.active = self.active + (y.detach() != 0).float().mean()
            self.steps += 1
        return self.mode != "last" or t == self.T - 1

    def __call__(self, y: torch.Tensor, t: int):
        if not self._step(y, t):
            return None
        o = self.readout(y)
        d = o.detach()
        self.logits = d if self.logits is None else self.logits + d
        return torch.nn.functional.cross_entropy(o, self.labels, reduction="sum") * self.scale

    def _closed_form(self, y: torch.Tensor, t: int) -> tuple[Any, Any, dict]:
        r"""The same loss with its gradient in closed form (:data:`evrtrl.engine.LossFn`):
        with :math:`o = V y + c` and :math:`p = \mathrm{softmax}(o)`,
        :math:`\delta = s\,(p - \mathrm{onehot}(\ell))`, :math:`dL/dy = \delta V`,
        :math:`dL/dV = \delta^T y`, :math:`dL/dc = \sum_b \delta_b`."""
        if not self._step(y, t):
            return None, None, {}
        V, c = self.readout.weight.detach(), self.readout.bias.detach()
        o = torch.addmm(c, y, V.t())
        self.logits = o if self.logits is None else self.logits + o
        logp = torch.log_softmax(o, -1)
        loss = -logp.gather(1, self.labels[:, None]).sum() * self.scale
        delta = logp.exp_()
        delta[self.rows, self.labels] -= 1.0
        delta.mul_(self.scale)
        return loss, delta @ V, {self.readout.weight: delta.t() @ y, self.readout.bias: delta.sum(0)}


def make_loss(readout, labels, T, mode="mean", global_batch=None, activity=False) -> _Loss:
    return _Loss(readout, labels, T, mode, global_batch or labels.numel(), activity)


@torch.no_grad()
def predict_logits(model, readout, x: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """Summed (``mean``) or last-step (``last``) readout logits ``(B, classes)``."""
    out = simulate(model, x.to(readout.weight.dtype).to(readout.weight.device)).outputs  # (T, B, n)
    if mode == "last":
        return readout(out[-1])
    return readout(out).sum(0)


def _accuracy(model, readout, data: SequenceData, mode: str, batch: int) -> float:
    correct = 0
    dtype = readout.weight.dtype
    for lo in range(0, len(data), batch):
        idx = list(range(lo, min(len(data), lo + batch)))
        x, y = data.batch(idx, dtype)
        correct += int((predict_logits(model, readout, x, mode).argmax(-1).cpu() == y).sum())
    return correct / max(1, len(data))


def _test_beta(model, data: SequenceData, batch: int, dtype, device: Any = "cpu") -> dict[str, float]:
    """Per-sequence beta on the test split, from the event engine (forward only)."""
    batches = (data.batch(list(range(lo, min(len(data), lo + batch))), dtype)[0].to(device)
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


def _nan_to_none(v: float) -> float | None:
    return None if v != v else v


def _resolve(cfg: TrainConfig, run: Path, resume: bool) -> tuple[TrainConfig, str, Checkpoint | None, list[str]]:
    """The run's config, id and checkpoint (read only; every rank does the same)."""
    cfg_path, ckpt_path = run / "config.json", run / "checkpoint.h5"
    prev_path = previous_path(ckpt_path)
    notes: list[str] = []
    if not (resume and cfg_path.exists()):
        if resume and (ckpt_path.exists() or prev_path.exists()):
            raise RunError(f"{run}: holds a checkpoint but no config.json; cannot tell which run it belongs to: "
                           "resume refused (--overwrite starts anew)")
        if resume:
            notes.append(f"nothing to resume in {run}: a new run starts")
        cfg.validate()
        return cfg, new_run_id(), None, notes
    stored, run_id = load_run_config(run)
    # a None (the model's default, filled by validate) leaves the stored value
    changes = {f.name: (getattr(stored, f.name), getattr(cfg, f.name)) for f in fields(TrainConfig)
               if getattr(cfg, f.name) is not None and getattr(stored, f.name) != getattr(cfg, f.name)}
    refused = [k for k in changes if k not in RESUME_MAY_CHANGE]
    if refused:
        shown = ", ".join(f"{k} {changes[k][1]!r} (stored {changes[k][0]!r})" for k in refused)
        raise ConfigError(f"--resume continues the run in {run} with its config.json, but these options differ "
                          f"from it: {shown}; drop them, or start a new run (another --out, or --overwrite)")
    for k, (old, new) in changes.items():
        setattr(stored, k, new)
        notes.append(f"resume: {k} changed from {old!r} to {new!r}")
    stored.validate()
    state = None
    for cand in (ckpt_path, prev_path):
        if not cand.exists():
            continue
        try:
            st = load_checkpoint(cand)
        except FormatError as exc:
            if cand == ckpt_path and prev_path.exists():
                notes.append(f"resume: {cand.name} is unreadable ({exc}); resuming from {prev_path.name}")
                continue
            raise
        got = st.extra.get("run_id")
        if got != run_id:
            raise RunError(f"{cand}: belongs to run {got or '(none: evrtrl 0.1.0)'}, but {cfg_path} to run "
                           f"{run_id or '(none: evrtrl 0.1.0)'}; the directory mixes two runs: resume refused "
                           "(--overwrite starts anew)")
        state = st
        break
    if state is None:
        notes.append(f"resume: {run} holds no checkpoint yet: the run starts from its beginning "
                     f"(same config, run id {run_id})")
    return stored, run_id or new_run_id(), state, notes


# ------------------------------------------------------------------------- train
def train(
    cfg: TrainConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: Sequence[Callable[[dict[str, Any]], None]] = (),
    train_data: SequenceData | None = None,
    test_data: SequenceData | None = None,
    allow_memory: bool = False,
    echo: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train per ``cfg`` into the run directory ``out`` (see module docstring).

    ``resume=True`` continues from ``out/checkpoint.h5`` with the run's stored
    ``config.json`` (``cfg`` may differ from it only in :data:`RESUME_MAY_CHANGE`);
    ``overwrite=True`` replaces a run already in ``out`` (without it a non-empty ``out`` is
    refused). ``callbacks`` are called after each batch (after any checkpoint) with the
    batch record; an exception raised there stops the run as a kill would. ``echo``, if
    given, receives one line per epoch end and every note. Runs distributed when a
    ``torch.distributed`` group is initialised (:mod:`evrtrl.training.distributed`); an
    exception on any rank stops every rank. ``cfg.shard_columns > 1`` splits the influence
    columns too (:mod:`evrtrl.training.sharded`). The influence memory per process is
    planned first and a plan above the memory available is refused unless ``allow_memory``.
    """
    rank, world = ddp.rank_and_world()
    lock = None
    try:
        err = None
        if rank == 0:
            try:
                lock = prepare_run_dir(out, resume=resume, overwrite=overwrite)
            except (EvrtrlError, OSError) as exc:
                err = exc
        ddp.agree(err, "the run-directory setup")
        return _train(cfg, Path(out), resume, progress, callbacks, train_data, test_data, allow_memory, echo)
    except BaseException:
        if world > 1:
            ddp.abort()
        raise
    finally:
        if lock is not None:
            lock.release()


def _train(cfg, run, resume, progress, callbacks, train_data, test_data, allow_memory, echo) -> TrainResult:
    t_start = time.perf_counter()
    rank = ddp.rank_and_world()[0]
    ckpt_path, cfg_path = run / "checkpoint.h5", run / "config.json"
    cfg, run_id, state, notes = _resolve(cfg, run, resume)
    say = echo if (echo is not None and rank == 0) else (lambda line: None)
    for n in notes:
        say("note: " + n)
    grid = sharded.setup_grid(cfg.shard_columns, cfg.shard_partition)
    if grid.columns > 1 and cfg.method == "bptt":
        raise ConfigError("--shard-columns splits the RTRL influence matrix; --method bptt has none")

    data = train_data or open_data(cfg.data, "train", dt_us=cfg.dt_us)
    if test_data is None and cfg.eval_each_epoch:
        test_data = open_data(cfg.data, "test", dt_us=cfg.dt_us)
    if len(data) == 0:
        raise ConfigError(f"--data {cfg.data}: the train split holds no samples")
    if cfg.batch < grid.data:
        raise ConfigError(f"--batch {cfg.batch} is smaller than the {grid.data} data processes")

    counters = {"epoch": 0, "batch": 0, "global_batch": 0, "updates": 0, "wall_s": 0.0,
                "train_s": 0.0}
    batch_log = MetricsLog(run, "batches", cfg.log if rank == 0 else ())
    epoch_log = MetricsLog(run, "epochs", cfg.log if rank == 0 else ())
    if state is not None:
        model, readout = state.model.to(cfg.device), state.readout.to(cfg.device)
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
        _write_json(cfg_path, {**asdict(cfg), "run_id": run_id, "data_info": data.describe()})

    params = list(model.parameters()) + list(readout.parameters())
    base_opt = torch.optim.Adam(params, lr=cfg.lr)
    if state is not None:
        base_opt.load_state_dict(state.optimizer_state)
    optimizer = grid.wrap_optimizer(base_opt, model, cfg.method)
    if cfg.method != "bptt":
        check_memory(plan_memory(model, cfg.batch, cfg.method, data=grid.data,
                                 columns=grid.columns), allow=allow_memory, device=cfg.device)

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
    on_cpu = torch.device(cfg.device).type == "cpu"
    rtrl = cfg.method != "bptt"
    if cfg.method == "event":  # builds the compiled kernels on first use: not in train_wall_s
        make_engine(model, 1, "event", **grid.engine_options(allow_memory))
    wall0 = counters["wall_s"]
    t_run = time.perf_counter()

    def checkpoint() -> None:
        counters["wall_s"] = wall0 + time.perf_counter() - t_run
        sharded.sync_state(optimizer)  # owners' optimizer state (collective)
        if rank == 0:
            save_checkpoint(ckpt_path, model, readout, base_opt, counters=dict(counters),
                            rng={"torch": torch.get_rng_state()}, keep_previous=True,
                            metrics=batch_log.records + epoch_log.records, config=asdict(cfg), run_id=run_id)

    engine = None
    while counters["epoch"] < cfg.epochs:
        epoch = counters["epoch"]
        train_s = 0.0  # this epoch's training loop only (no data building, no evaluation)
        order = _epoch_order(cfg.seed, epoch, len(data))
        while counters["batch"] < n_batches:
            b = counters["batch"]
            global_idx = order[b * cfg.batch:(b + 1) * cfg.batch]
            idx = grid.data_shard(global_idx)
            if on_cpu:  # sparse for the event engine
                x, labels = learner_batch(data, idx, dtype, cfg.method)
            else:  # another device: dense batches moved there
                x, labels = data.batch(idx, dtype)
                x, labels = x.to(cfg.device), labels.to(cfg.device)
            T = x.shape[0]
            loss_fn = make_loss(readout, labels, T, cfg.loss, len(global_idx), activity=cfg.method == "bptt")
            strength = cfg.activity * warmup_factor(cfg.activity_warmup, epoch + b / n_batches)
            reg = (ActivityRegularizer(strength, cfg.activity_target,
                                       scale=1.0 / (len(global_idx) * T))
                   if strength > 0 else None)
            learner = OnlineLearner(model, optimizer, loss_fn, k=cfg.k or T, method=cfg.method,
                                    extra_parameters=readout.parameters(), layer_loss=reg,
                                    engine_options=grid.engine_options(allow_memory),
                                    reuse=engine)  # the last batch's engine, restarted
            t0 = time.perf_counter()
            try:
                losses = learner.run(x)
            except NonFiniteError as exc:
                raise NonFiniteError(f"epoch {epoch}, batch {b} (global batch {counters['global_batch'] + 1}): "
                                     f"{exc}") from exc
            dt_batch = time.perf_counter() - t0
            engine = learner.engine
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
                    st["alpha"] if st else float(loss_fn.active) / max(1, loss_fn.steps),
                    st["beta"] if st else float("nan"),
                    st["gamma_final"] if st and rtrl else float("nan"),  # BPTT holds no influence
                    learner.engine.influence_density() if st and rtrl else float("nan")]
            vals = sharded.reduce_metrics(grid, vals)
            vals[3] = sharded.sum_over_columns(grid, vals[3:4])[0]  # the shards split the work
            loss_g, correct_g, macs_d, macs_e, reg_g, n_seq_g = vals[:6]
            betas = [v / n_seq_g if n_seq_g else float("nan") for v in vals[6:7 + n_layers]]
            alpha, beta_all_steps, gamma, mdens = (v / grid.data for v in vals[7 + n_layers:])
            counters["batch"] += 1
            counters["global_batch"] += 1
            counters["updates"] += learner.updates
            # metrics an engine without RTRL (bptt) does not have are None (null / empty), never NaN
            rec = {
                "kind": "batch", "epoch": epoch, "batch": b, "global_batch": counters["global_batch"],
                "updates": counters["updates"], "loss": loss_g, "reg_loss": reg_g,
                "activity": strength,
                "acc": correct_g / len(global_idx),
                "alpha": alpha, "beta": _nan_to_none(betas[0]),
                **{f"beta_l{l}": _nan_to_none(v) for l, v in enumerate(betas[1:])},
                "beta_all_steps": _nan_to_none(beta_all_steps), "gamma": _nan_to_none(gamma),
                "m_density": _nan_to_none(mdens), "macs_event": _nan_to_none(macs_e), "macs_dense": macs_d,
                "saving": macs_d / macs_e if macs_e and macs_e == macs_e else None,
                "batch_s": dt_batch,
            }
            if rank == 0:
                batch_log.write(rec)
            if cfg.checkpoint_every and counters["global_batch"] % cfg.checkpoint_every == 0 \
                    and counters["batch"] < n_batches:
                checkpoint()
            if bar is not None:
                bar.update(1)
                post = {"loss": f"{loss_g:.3f}", "acc": f"{rec['acc']:.2f}", "alpha": f"{alpha:.3f}"}
                if rec["beta"] is not None:
                    post["beta"] = f"{rec['beta']:.3f}"
                if rec["saving"] is not None:
                    post["saving"] = f"{rec['saving']:.1f}x"
                bar.set_postfix(**post)
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
                vs = [r[k] for r in recs if r.get(k) is not None]
                erec[k] = sum(vs) / len(vs) if vs else None
        erec["train_s"] = train_s
        if cfg.eval_each_epoch and test_data is not None:
            erec["test_acc"] = _accuracy(model, readout, test_data, cfg.loss, cfg.eval_batch)
            if cfg.model == "egru" or cfg.method == "event":
                erec.update(_test_beta(model, test_data, cfg.eval_batch, dtype, cfg.device))
        counters["epoch"] += 1
        counters["batch"] = 0
        if rank == 0:
            epoch_log.write(erec)
            save_model(model, run / "model.h5", readout=readout, epoch=epoch + 1, loss_mode=cfg.loss,
                       data=cfg.data, test_acc=erec.get("test_acc"), run_id=run_id)
        checkpoint()
        if rank == 0 and echo is not None:
            line = _epoch_line(erec, cfg.epochs)
            if bar is not None:
                bar.clear()
            say(line)
            if bar is not None:
                bar.refresh()
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - t_start
    if rank == 0:
        _write_json(run / "summary.json", {
            "epochs": counters["epoch"], "updates": counters["updates"], "run_id": run_id,
            "wall_s": wall0 + time.perf_counter() - t_run,
            # the training loop alone (OnlineLearner.run of every batch): no data loading,
            # no evaluation, no checkpoints
            "train_wall_s": counters["train_s"],
            "last_epoch": epoch_log.records[-1] if epoch_log.records else None,
        })
    ddp.barrier()
    return TrainResult(run, model, readout, list(batch_log.records), list(epoch_log.records), wall, run_id, notes)


def _epoch_line(erec: dict[str, Any], epochs: int) -> str:
    """``epoch 2/6: loss 0.4123 acc 0.812 test_acc 0.850 alpha 0.31 saving 4.2x 12.3 s`` (absent metrics left out)."""
    parts = [f"epoch {erec['epoch'] + 1}/{epochs}:"]
    for k, fmt in (("loss", "{:.4f}"), ("acc", "{:.3f}"), ("test_acc", "{:.3f}"), ("alpha", "{:.3f}"),
                   ("saving", "{:.1f}x")):
        if erec.get(k) is not None:
            parts.append(f"{k} " + fmt.format(erec[k]))
    parts.append(f"{erec['wall_s']:.1f} s")
    return " ".join(parts)
