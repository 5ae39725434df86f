"""``evaluate(run_or_model, data) -> accuracy`` on the test split of a data set."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from evrtrl.errors import ConfigError
from evrtrl.models.modelfile import LoadedModel, load_model
from evrtrl.network import layers_of
from evrtrl.training.data import DataSpec, SequenceData, open_data
from evrtrl.training.loop import _accuracy, load_run_config

__all__ = ["evaluate", "resolve_model"]


def resolve_model(run_or_model: Any) -> tuple[Any, Any, dict[str, Any]]:
    """``(model, readout, info)`` from a run directory, a model/checkpoint file, a
    :class:`~evrtrl.models.LoadedModel` or a ``(model, readout)`` pair. ``info`` holds
    ``loss_mode``, ``data`` and ``dt_us`` where known."""

    if isinstance(run_or_model, LoadedModel):
        return run_or_model.model, run_or_model.readout, dict(run_or_model.extra)
    if isinstance(run_or_model, tuple) and len(run_or_model) == 2:
        return run_or_model[0], run_or_model[1], {}
    path = Path(run_or_model)
    info: dict[str, Any] = {}
    if path.is_dir():
        if (path / "config.json").exists():
            c, _ = load_run_config(path)
            info.update(loss_mode=c.loss, data=c.data, dt_us=c.dt_us)
        path = path / "model.h5"
    lm = load_model(path)
    info = {**lm.extra, **{k: v for k, v in info.items() if v is not None}}
    if lm.readout is None:
        raise ConfigError(f"{path}: holds no readout; evaluate needs a model saved with readout=")
    return lm.model, lm.readout, info


def evaluate(run_or_model: Any, data: str | DataSpec | SequenceData | None = None, *,
             split: str = "test", batch: int = 64, loss_mode: str | None = None) -> float:
    """Accuracy of a trained model on ``split`` of ``data`` (default: the run's data).

    The prediction rule follows the run's loss (``mean``: argmax of the time-summed
    readout logits; ``last``: of the last step's), read from the file or ``loss_mode``.
    ``data`` given explicitly may name a single file or tree: it is evaluated whole.
    """
    if batch < 1:
        raise ConfigError(f"evaluate: batch must be >= 1, got {batch}")
    model, readout, info = resolve_model(run_or_model)
    mode = loss_mode or info.get("loss_mode") or "mean"
    whole_set = data is not None
    if data is None:
        data = info.get("data")
        if data is None:
            raise ConfigError("evaluate: no data given and none recorded with the model")
    if not isinstance(data, SequenceData):
        data = open_data(data, split, dt_us=info.get("dt_us"), whole_set=whole_set)
    if data.n_inputs != model_input_size(model):
        raise ConfigError(f"evaluate: data has {data.n_inputs} input channels, the model expects "
                          f"{model_input_size(model)}")
    return _accuracy(model, readout, data, mode, batch)


def model_input_size(model: Any) -> int:

    return layers_of(model)[0].layer.input_size
