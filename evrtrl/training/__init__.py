"""Training: data adapter, online-RTRL training loop with checkpoints and resume,
evaluation, figures, data-parallel scale-out and the CLI sub-commands.

``models`` and ``datasets`` are imported lazily (inside functions), as the core's
dependency rule asks. See docs/training.md.

>>> from evrtrl.training import TrainConfig, train, evaluate, plot   # doctest: +SKIP
"""
from evrtrl.training.data import DataSpec, SequenceData, open_data, parse_data_spec
from evrtrl.training.evaluate import evaluate
from evrtrl.training.loop import TrainConfig, TrainResult, build_model, train
from evrtrl.training.metrics import dense_rtrl_macs, read_records
from evrtrl.training.plot import plot

__all__ = [
    "TrainConfig", "TrainResult", "train", "build_model", "evaluate", "plot",
    "DataSpec", "SequenceData", "open_data", "parse_data_spec", "dense_rtrl_macs", "read_records",
]
