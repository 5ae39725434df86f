"""Leaving the library: hardware profiles, quantisation and core mapping, NIR, HDF5 bundles.

Public API::

    from evrtrl.neuromorphic import (list_profiles, load_profile, map_to_hardware,
                              export_nir, import_nir, export_bundle, read_bundle,
                              export_xylo, export_netx, simulate_export)

See ``docs/neuromorphic.md``.
"""
if __name__ != "evrtrl.neuromorphic":  # the folder is installed as evrtrl.neuromorphic; a bare import would be a second copy
    raise ImportError(f"import evrtrl.neuromorphic, not {__name__}: this folder is installed as evrtrl.neuromorphic "
                      "(pip install -e . from the repository root)")
from .profiles import HardwareProfile, list_profiles, load_profile, PROFILE_PATH_ENV
from .netspec import EGRULayer, LIFLayer, Network, network_from_model, model_from_network
from .mapping import MappingReport, ParameterDrift, Violation, map_to_hardware, quantized_model, compare_spikes
from .quantize import quantize_weights
from .nir_io import export_nir, import_nir, network_from_nir_graph, nir_graph_from_network
from .bundle import BUNDLE_VERSION, Bundle, export_bundle, read_bundle
from .vendor_export import export_netx, export_xylo
from .chipsim import simulate_export

__all__ = [
    "HardwareProfile", "list_profiles", "load_profile", "PROFILE_PATH_ENV",
    "EGRULayer", "LIFLayer", "Network", "network_from_model", "model_from_network",
    "MappingReport", "ParameterDrift", "Violation", "map_to_hardware", "quantized_model", "compare_spikes",
    "quantize_weights",
    "export_nir", "import_nir", "network_from_nir_graph", "nir_graph_from_network",
    "export_bundle", "read_bundle", "Bundle", "BUNDLE_VERSION",
    "export_xylo", "export_netx", "simulate_export",
]
