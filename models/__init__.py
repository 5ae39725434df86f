"""Cells (EGRU, LIF), their pseudo-derivatives, stacks, masks and readouts."""
from models.egru import EGRU, EGRUState, EGRUWeights, egru_jacobian, egru_step
from models.lif import LIF, LIFParameters, LIFState, LIFWeights, lif_jacobian, lif_step
from models.masks import random_masks
from models.readout import Readout
from models.stack import Stack
from models.surrogate import FastSigmoid, PseudoDerivative, Triangle, heaviside

__all__ = [
    "EGRU", "EGRUState", "EGRUWeights", "egru_step", "egru_jacobian",
    "LIF", "LIFState", "LIFWeights", "LIFParameters", "lif_step", "lif_jacobian",
    "Stack", "random_masks", "Readout",
    "PseudoDerivative", "Triangle", "FastSigmoid", "heaviside",
]
