"""Cells (EGRU, LIF), their registry, pseudo-derivatives, stacks, masks, readouts and the model file."""
if __name__ != "evrtrl.models":  # the folder is installed as evrtrl.models; a bare import would be a second copy
    raise ImportError(f"import evrtrl.models, not {__name__}: this folder is installed as evrtrl.models "
                      "(pip install -e . from the repository root)")
from evrtrl.models.registry import CellSpec, HyperParameter, cell_spec, register, registered_cells
from evrtrl.models.egru import EGRU, EGRUState, EGRUWeights, egru_jacobian, egru_step
from evrtrl.models.lif import LIF, LIFParameters, LIFState, LIFWeights, lif_jacobian, lif_step
from evrtrl.models.masks import random_masks
from evrtrl.models.readout import Readout
from evrtrl.models.stack import Stack
from evrtrl.models.surrogate import FastSigmoid, PseudoDerivative, Triangle, heaviside
from evrtrl.models import kernels  # noqa: E402,F401  (registers the cells' compiled steps)
from evrtrl.models.modelfile import LoadedModel, load_model, save_model  # noqa: E402  (needs the cells above)

__all__ = [
    "EGRU", "EGRUState", "EGRUWeights", "egru_step", "egru_jacobian",
    "LIF", "LIFState", "LIFWeights", "LIFParameters", "lif_step", "lif_jacobian",
    "Stack", "random_masks", "Readout",
    "CellSpec", "HyperParameter", "register", "cell_spec", "registered_cells",
    "PseudoDerivative", "Triangle", "FastSigmoid", "heaviside",
    "save_model", "load_model", "LoadedModel",
]
