#!/usr/bin/env bash
# Create .venv and install evrtrl with everything its tests and commands use.
# Needs only Python >= 3.10 with venv and pip. Idempotent: re-running updates in place.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# CPU torch, pinned, first: an unpinned torch pulls gigabytes of CUDA wheels
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[all]"
# the vendors' simulators for the neuromorphic cross-checks (rockpool + xylosim, ~35 s; xylosim compiles C++)
# CI must have them (its vendor tests would otherwise skip): there a failed install fails the setup
python -m pip install -q -e ".[vendor]" || {
  [ "${CI:-}" = true ] && { echo "setup: the 'vendor' extra failed to install (CI needs it)" >&2; exit 1; }
  echo "setup: could not install the 'vendor' extra (its tests skip)" >&2; }
# norse 1.1.0 declares torchvision: pip resolving it next to torch 2.13.0+cpu installs
# torchvision 0.29.1, which replaces the CPU torch by torch 2.14.1 and ~20 nvidia-* CUDA wheels
# (pip --dry-run --report, 2026-11-30), so norse is in no extra. norse.torch needs only numpy,
# torch, nir and nirtorch (installed above by the 'sim' extra).
# Installed last and without dependencies, so pip has no declared-but-missing torchvision to report.
python -m pip install -q --no-deps "norse==1.1.0"
# espeak-ng synthesises the offline spoken-digit set (optional; its tests skip without it)
if ! command -v espeak-ng >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null) \
    || echo "setup: could not install espeak-ng (spoken-digit builder tests will skip)" >&2
fi
echo "setup: done ($(python -c 'import torch, numpy; print("torch", torch.__version__, "numpy", numpy.__version__)'))"
