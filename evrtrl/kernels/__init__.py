"""Compiled CPU kernels of the event engine and the rule that picks them (issue 9, item 1).

:mod:`evrtrl.kernels.build` builds and caches the C++ extensions and reads
``EVRTRL_KERNEL`` (``auto`` / ``torch`` / ``compiled``); :mod:`evrtrl.kernels.step` is the
compiled step that :class:`evrtrl.EventRTRL` dispatches to. The cells' own kernels live
beside their pure steps in ``models/`` (``egru_kernel.cpp``, ``lif_kernel.cpp``).
"""
from evrtrl.kernels.build import KERNEL_ENV, KERNEL_MODES, KernelBuildWarning, cache_dir, compiler, kernel_mode
from evrtrl.kernels.step import (
    COMPILED_LAYOUT, CellKernel, CompiledStep, engine_module, kernel_module, register_cell_kernel,
    registered_cell_kernels,
)

__all__ = ["KERNEL_ENV", "KERNEL_MODES", "KernelBuildWarning", "cache_dir", "compiler", "kernel_mode",
           "CellKernel", "CompiledStep", "engine_module", "register_cell_kernel",
           "registered_cell_kernels", "kernel_module", "COMPILED_LAYOUT"]
