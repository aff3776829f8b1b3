#!/usr/bin/env bash
# The release check (`make release-check`, run by CI): build the wheel and the sdist, check them with twine,
# install the wheel into a fresh virtual environment (no source tree on the path: it runs from an empty folder)
# and run the path a newcomer takes with it: --help, phantoms, scan, train (tiny), predict, card.
# Usage: scripts/release_check.sh [PYTHON]   (PYTHON: the interpreter with build and twine; default .venv's)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${1:-$ROOT/.venv/bin/python}
WORK=$(mktemp -d /tmp/oncolens-release.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cd "$ROOT"
rm -rf dist
"$PY" -m build --outdir dist . > "$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log"; exit 1; }
"$PY" -m twine check --strict dist/*
WHEEL=$(ls dist/oncolens-*.whl)
echo "built: $(ls dist)"
python3 -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install -q --no-cache-dir --upgrade pip
# torch first, from the same pins as the project (the wheel itself leaves the build to the user)
"$VPY" -m pip install -q --no-cache-dir -c "$ROOT/constraints.txt" torch==2.14.1 torchvision==0.29.1
"$VPY" -m pip install -q --no-cache-dir -c "$ROOT/constraints.txt" "$WHEEL"
mkdir "$WORK/user" && cd "$WORK/user"
export PATH="$WORK/venv/bin:$PATH" MPLBACKEND=Agg
"$VPY" -c "import oncolens, sys; assert 'site-packages' in oncolens.__file__, oncolens.__file__; print('oncolens', oncolens.__version__, 'from', oncolens.__file__)"
oncolens --help > /dev/null
oncolens phantoms images --n 48 --size 64
oncolens scan images --out manifest.csv > /dev/null
oncolens split manifest.csv --out splits.csv --test 0.25 --val 0.25 > /dev/null
oncolens train splits.csv --name tiny --model seed_cnn --weights random --epochs 1 --image-size 64 > train.log
oncolens predict runs/tiny/bundle images/mri --out predictions.csv > /dev/null
test "$(wc -l < predictions.csv)" -gt 10
oncolens card runs/tiny/bundle | grep -q "Not for diagnosis"
echo "release check passed: $(basename "$WHEEL") installs and runs phantoms, scan, split, train, predict, card"
