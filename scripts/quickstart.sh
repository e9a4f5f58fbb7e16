#!/usr/bin/env bash
# One entry point for a fresh machine.
#   bash scripts/quickstart.sh        set up, get Fashion-MNIST (and man pages) offline, run the main job (fashion-mlp)
#   bash scripts/quickstart.sh test   set up, run the default test suite
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"

python="${PYTHON:-}"
if [ -z "$python" ]; then
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      python="$candidate"; break
    fi
  done
fi
[ -n "$python" ] || { echo "quickstart: Python >= 3.11 is required" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
# torch is pinned (a CPU build installs from a local file here; elsewhere pip fetches the same release).
.venv/bin/pip install --quiet --disable-pip-version-check "torch==2.13.0"
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[test,postgres]"

if [ "$mode" = "test" ]; then
  exec .venv/bin/python -m pytest
fi

# Fashion-MNIST (the main job's data) and the man pages (topic-vae's offline corpus) come from Debian's
# packages where apt-get is available.
missing=""
.venv/bin/dlclassics data status fashion-mnist | grep " ok " >/dev/null || missing="dataset-fashion-mnist"
.venv/bin/dlclassics data status manpages-dev | grep " ok " >/dev/null || missing="$missing manpages-dev"
if [ -n "$missing" ]; then
  if command -v apt-get >/dev/null; then
    sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get install -y -q $missing >/dev/null \
      || { $sudo_cmd apt-get update -q >/dev/null && $sudo_cmd apt-get install -y -q $missing >/dev/null; }
  elif [[ "$missing" == *dataset-fashion-mnist* ]]; then
    echo "quickstart: Fashion-MNIST is missing and apt-get is not available: run '.venv/bin/dlclassics data fetch fashion-mnist' (needs network) or put the four IDX files in ~/.cache/dlclassics/fashion-mnist/" >&2
    exit 1
  fi
fi
exec .venv/bin/dlclassics run fashion-mlp "${@:2}"
