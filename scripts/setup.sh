#!/usr/bin/env bash
# Set up perceiver-lit on a fresh machine: system packages (Debian, as root), a virtual environment in .venv,
# torch, and the project with every extra. Safe to run again: each step is skipped when already done.
#
#   bash scripts/setup.sh                # CPU machine (installs torch==2.13.0, the local CPU wheel)
#   TORCH_SPEC='torch>=2.4' bash scripts/setup.sh   # a GPU node: let pip pick your CUDA build
#   SKIP_APT=1 bash scripts/setup.sh     # not root, or not Debian: bring ffmpeg/libsndfile/slurm yourself
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
VENV=${VENV:-.venv}
# Debian packages: real data (Fashion-MNIST, fortunes), speech (espeak-ng, flite), media libs, and a real Slurm for
# the cluster tests.
APT_PACKAGES=(dataset-fashion-mnist espeak-ng flite fortunes fortunes-de fortunes-es fortunes-it fortunes-br
              fortunes-pl fortunes-ru libsndfile1 ffmpeg slurm-wlm munge)

log() { printf '[setup] %s\n' "$*"; }

if [ -z "${SKIP_APT:-}" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    missing=()
    for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        log "apt-get install ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        log "Debian packages present"
    fi
else
    log "skipping apt (not root, no apt-get, or SKIP_APT set)"
fi

if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
pip_q() { "$PY" -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v '^WARNING: Location' || true; }

if ! "$PY" -c 'import torch' 2>/dev/null; then
    log "pip install $TORCH_SPEC"
    pip_q "$TORCH_SPEC"
fi
log "pip install -e .[all,test]"
pip_q -e ".[all,test]"
"$PY" -c 'import perceiver_lit, datamodules, torch, lightning; print(f"[setup] ok: torch {torch.__version__}, lightning {lightning.__version__}")'
