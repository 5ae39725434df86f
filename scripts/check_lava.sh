#!/usr/bin/env bash
# Check evrtrl's netx exports in Lava's bit-accurate fixed-point simulation (see scripts/check_lava.py).
# Lava needs Python 3.10 and numpy < 2: this builds a SEPARATE venv (never the project's .venv).
#   LAVA_PYTHON  a Python 3.10 interpreter (default: python3.10, else pyenv's 3.10.13)
#   LAVA_VENV    where the Lava venv goes (default: /tmp/evrtrl-lava-venv; reused when present)
#   PROJECT_PY   the project's interpreter (default: .venv/bin/python)
# Installs lava-nc 0.10.0 (with its dependencies) and lava-dl 0.6.0 without dependencies, plus h5py:
# lava-dl pins torch 2.3 / torchvision 0.18, which netx needs only for RF neurons and its PyTorch
# wrapper (check_lava.py stubs those two imports); torch 2.3 on PyPI is a CUDA build (GBs of wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
PY310=${LAVA_PYTHON:-$(command -v python3.10 || echo /root/.pyenv/versions/3.10.13/bin/python)}
VENV=${LAVA_VENV:-/tmp/evrtrl-lava-venv}
PROJECT_PY=${PROJECT_PY:-.venv/bin/python}
OUT=${1:-$(mktemp -d /tmp/evrtrl-lava-check.XXXXXX)}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY310" -c 'import sys; assert sys.version_info[:2] == (3, 10), sys.version' \
    || { echo "check_lava: need Python 3.10 (set LAVA_PYTHON)" >&2; exit 2; }
  "$PY310" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "lava-nc==0.10.0" "h5py>=3.7,<4"
  "$VENV/bin/pip" install -q --no-deps "lava-dl==0.6.0"
fi
"$PROJECT_PY" scripts/check_lava.py prepare "$OUT"
"$VENV/bin/python" -W ignore scripts/check_lava.py run "$OUT"
