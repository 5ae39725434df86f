#!/usr/bin/env bash
# Test the declared dependency ranges (Python, torch, numpy) at their ends.
#
# For each row "PYTHON|TORCH|NUMPY" a scratch virtual environment is made with that Python,
# the pinned torch and numpy plus the other core requirements, evrtrl is installed from this
# checkout (a wheel, not editable), and a core test subset runs against the installed
# package: gradients event == dense == BPTT (float64), online learning, the cells as modules,
# the cell registry and the 0.1.0 file formats. One line per row; the table in
# docs/dependencies.md comes from this script. Benchmark-style: not part of CI (it
# downloads wheels of several GB where torch is a CUDA build).
#
#   bash scripts/check_dep_ranges.sh                 # every row below
#   bash scripts/check_dep_ranges.sh "3.12|torch==2.14.1|numpy==2.4.6"   # one row
#   KEEP=1 ... keeps the environments (under ${WORK:-/tmp/evrtrl-deps})
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
WORK=${WORK:-/tmp/evrtrl-deps}
ROWS=("$@")
if [ ${#ROWS[@]} -eq 0 ]; then
  ROWS=(
    "3.11|torch==2.13.0|numpy==2.3.5"   # the CI environment (scripts/setup.sh)
    "3.11|torch==2.13.0|numpy==2.4.6"   # numpy upper end (core only: the sim extra caps it)
    "3.11|torch==2.13.0|numpy==1.24.4"  # numpy lower end
    "3.10|torch==2.13.0|numpy==1.24.4"  # Python lower end
    "3.12|torch==2.14.1|numpy==2.4.6"   # Python 3.12, newest torch installable here
    "3.11|torch==2.1.2|numpy==1.26.4"   # torch lower end (torch 2.1 predates NumPy 2)
    "3.13|torch==2.14.1|numpy==2.4.6"   # Python upper end
  )
fi
TESTS=(tests/core/test_gradients.py tests/core/test_online.py tests/core/test_engine_protocol.py
       tests/models/test_forward.py tests/models/test_cell_registry.py tests/models/test_format_0_1_0.py)

find_python() {  # $1 = "3.10": pyenv's, else python3.10 on PATH
  local p
  for p in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$1".*/bin/python; do
    [ -x "$p" ] && { echo "$p"; return; }
  done
  command -v "python$1" || true
}

mkdir -p "$WORK"
printf '%-6s %-16s %-14s %-10s %s\n' python torch numpy result detail
for row in "${ROWS[@]}"; do
  IFS='|' read -r pyver torch numpy <<<"$row"
  py=$(find_python "$pyver")
  name="py${pyver}-${torch#torch==}-${numpy#numpy==}"
  env="$WORK/$name"; log="$WORK/$name.log"
  if [ -z "$py" ]; then
    printf '%-6s %-16s %-14s %-10s %s\n' "$pyver" "${torch#torch==}" "${numpy#numpy==}" "n/a" "no python$pyver"
    continue
  fi
  rm -rf "$env"
  {
    "$py" -m venv "$env" && "$env/bin/python" -m pip install -q --upgrade pip &&
    "$env/bin/python" -m pip install -q "$torch" "$numpy" "h5py>=3.8" "tqdm>=4.60" "pytest>=7.4" "hypothesis>=6.80" &&
    "$env/bin/python" -m pip install -q --no-deps "$REPO"
  } >"$log" 2>&1
  if [ $? -ne 0 ]; then
    printf '%-6s %-16s %-14s %-10s %s\n' "$pyver" "${torch#torch==}" "${numpy#numpy==}" "no-install" "see $log"
    continue
  fi
  got=$("$env/bin/python" -c 'import sys, torch, numpy; print(f"{sys.version.split()[0]} torch {torch.__version__} numpy {numpy.__version__}")' 2>>"$log")
  size=$(du -sh "$env" 2>/dev/null | cut -f1)
  # run from outside the checkout, so that the installed package is the one imported
  (cd "$WORK" && OMP_NUM_THREADS=1 timeout 3600 "$env/bin/python" -m pytest -q -p no:cacheprovider \
      "${TESTS[@]/#/$REPO/}" >>"$log" 2>&1)
  rc=$?
  summary=$(grep -E "passed|failed|error" "$log" | tail -1)
  result=$([ $rc -eq 0 ] && echo pass || echo FAIL)
  printf '%-6s %-16s %-14s %-10s %s\n' "$pyver" "${torch#torch==}" "${numpy#numpy==}" "$result" "$got; $summary; env $size"
  [ "${KEEP:-0}" = 1 ] || rm -rf "$env"
done
