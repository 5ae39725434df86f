#!/usr/bin/env bash
# Check evrtrl's nir_convention="snntorch" NIR files in snnTorch's import_from_nir (see scripts/check_snntorch.py).
# snnTorch is not a dependency: this builds a SEPARATE venv (never the project's .venv).
#   SNN_PYTHON   interpreter for the venv (default: python3)
#   SNN_VENV     where the venv goes (default: /tmp/evrtrl-snntorch-venv; reused when present)
#   PROJECT_PY   the project's interpreter (default: .venv/bin/python)
# Installs torch 2.13.0, snntorch 1.0.0 (its import_from_nir calls nirtorch.nir_to_torch, the
# nirtorch 2.x API), nirtorch 2.6 and nir (1.0.8). Prints PASS/FAIL; exit status 0 on PASS.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${SNN_PYTHON:-python3}
VENV=${SNN_VENV:-/tmp/evrtrl-snntorch-venv}
PROJECT_PY=${PROJECT_PY:-.venv/bin/python}
OUT=${1:-$(mktemp -d /tmp/evrtrl-snntorch-check.XXXXXX)}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q "torch==2.13.0" "snntorch==1.0.0" "nirtorch==2.6" "nir==1.0.8" "h5py>=3.7,<4"
fi
OMP_NUM_THREADS=1 "$PROJECT_PY" scripts/check_snntorch.py prepare "$OUT"
OMP_NUM_THREADS=1 "$VENV/bin/python" -W ignore scripts/check_snntorch.py run "$OUT"
