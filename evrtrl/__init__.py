"""evrtrl: exact, event-driven Real-Time Recurrent Learning for activity-sparse networks.

>>> import torch, evrtrl
>>> from evrtrl.models import EGRU
>>> model = EGRU(2, 8).double()
>>> x = torch.randn(5, 3, 2, dtype=torch.float64)
>>> evrtrl.simulate(model, x).spikes.shape
torch.Size([5, 3, 8])
"""
from evrtrl.api import (
    METHODS, Gradients, LayerTrace, SimulationResult, gradients, make_engine, relative_error, simulate,
)
from evrtrl.bptt import BPTT
from evrtrl.dense_engine import DenseRTRL
from evrtrl.engine import Engine, run_engine
from evrtrl.errors import (
    ConfigError, EvrtrlError, FormatError, MaskError, MemoryBudgetError, NonFiniteError,
    ShapeError, UnknownMethodError, UnsupportedError,
)
from evrtrl.event_engine import DegradesToDenseWarning, EventRTRL
from evrtrl.events import SparseSequence, SparseStep
from evrtrl.layer import Layer, LocalJacobian, Projection
from evrtrl.memory import MemoryPlan, plan_memory
from evrtrl.online import OnlineLearner
from evrtrl.shards import ColumnShard
from evrtrl.stats import EngineStats

__version__ = "0.2.0"

__all__ = [
    "simulate", "gradients", "make_engine", "relative_error", "METHODS", "Gradients", "SimulationResult",
    "LayerTrace", "Engine", "run_engine", "EventRTRL", "DenseRTRL", "BPTT", "DegradesToDenseWarning", "EngineStats",
    "Layer", "LocalJacobian", "Projection", "OnlineLearner", "SparseSequence", "SparseStep", "ColumnShard", "plan_memory",
    "MemoryPlan", "MemoryBudgetError",
    "EvrtrlError", "ShapeError", "NonFiniteError", "MaskError", "UnknownMethodError",
    "ConfigError", "FormatError", "UnsupportedError",
]
