#!/usr/bin/env bash
# Prints the shell exports that point tch/torch-sys at a libtorch 2.11.0.
#
# * If LIBTORCH is set, it must be a libtorch 2.11.0 (from pytorch.org, CPU or CUDA):
#   we check its build-version and use it as is.
# * Otherwise we create (once) or reuse a Python virtual environment in a cache
#   directory outside the checkout, holding torch==2.11.0 from PyPI, and build with
#   LIBTORCH_USE_PYTORCH=1. Fresh clones and CI reuse the cache. The first set-up
#   downloads about 4.6 GB (the wheel ships its CUDA libraries) and takes a minute or so.
#
# Usage: eval "$(scripts/setup-libtorch.sh)"   (all progress goes to stderr)
set -euo pipefail

TORCH_VERSION=2.11.0
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/grulm"
VENV="${GRULM_TORCH_VENV:-$CACHE_ROOT/torch-$TORCH_VERSION}"

die() { echo "grulm setup: $*" >&2; exit 1; }

if [ -n "${LIBTORCH:-}" ]; then
  [ -d "$LIBTORCH/lib" ] || die "LIBTORCH=$LIBTORCH has no lib/ directory; expected an unpacked libtorch $TORCH_VERSION (https://pytorch.org/get-started/locally/, 'LibTorch', C++)."
  found="unknown"
  [ -f "$LIBTORCH/build-version" ] && found="$(cat "$LIBTORCH/build-version")"
  case "$found" in
    "$TORCH_VERSION"|"$TORCH_VERSION"+*) ;;
    *) die "LIBTORCH=$LIBTORCH holds libtorch '$found', but grulm (tch 0.24.0) needs exactly $TORCH_VERSION. Download libtorch $TORCH_VERSION, or unset LIBTORCH to let grulm install torch==$TORCH_VERSION from PyPI into $VENV." ;;
  esac
  echo "export LIBTORCH='$LIBTORCH'"
  echo "unset LIBTORCH_USE_PYTORCH"
  exit 0
fi

PY="$VENV/bin/python"
# The marker is written only after a successful install, so an interrupted
# set-up (Ctrl-C, full disk) is redone rather than half-used.
MARKER="$VENV/.grulm-complete"

if [ -f "$MARKER" ]; then
  v="$("$PY" -c 'import torch,sys; sys.stdout.write(torch.__version__)' 2>/dev/null || true)"
  case "$v" in
    "$TORCH_VERSION"|"$TORCH_VERSION"+*) ;;
    "") die "$VENV exists but 'import torch' fails there. Remove it (rm -rf '$VENV') and run again." ;;
    *) die "$VENV holds torch $v, but grulm needs exactly $TORCH_VERSION. Remove it (rm -rf '$VENV') and run again." ;;
  esac
else
  command -v python3 >/dev/null || die "python3 not found: install Python 3.10+ (to get libtorch from PyPI) or set LIBTORCH to a libtorch $TORCH_VERSION."
  echo "grulm setup: first run: installing torch==$TORCH_VERSION from PyPI into $VENV (about 4.6 GB, a minute or more; reused afterwards)" >&2
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV" >&2 || die "python3 -m venv failed (on Debian/Ubuntu: apt install python3-venv)."
  "$PY" -m pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION" >&2 \
    || { rm -rf "$VENV"; die "pip could not install torch==$TORCH_VERSION into $VENV (network? disk space? about 4.6 GB are needed). Or set LIBTORCH to a downloaded libtorch $TORCH_VERSION."; }
  touch "$MARKER"
fi

# CUDA graphs need grulm's small C++ shim (csrc/cuda_shim.cpp), which needs the
# CUDA runtime headers. The wheel's nvidia-cuda-runtime has them but for
# crt/host_config.h, which nvidia-cuda-crt of the same CUDA minor version adds.
# Optional: without it grulm builds and runs without CUDA graphs. Tried once.
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
CRT_MARKER="$VENV/.grulm-crt-tried"
if [ -f "$SITE/nvidia/cu13/include/cuda_runtime_api.h" ] && [ ! -f "$SITE/nvidia/cu13/include/crt/host_config.h" ] && [ ! -f "$CRT_MARKER" ]; then
  rt="$("$PY" -m pip show nvidia-cuda-runtime 2>/dev/null | sed -n 's/^Version: \([0-9]*\.[0-9]*\).*/\1/p')"
  if [ -n "$rt" ]; then
    echo "grulm setup: installing nvidia-cuda-crt~=$rt.0 (CUDA headers for grulm's CUDA-graph shim)" >&2
    "$PY" -m pip install --quiet --disable-pip-version-check "nvidia-cuda-crt~=$rt.0" >&2 \
      || echo "grulm setup: could not install nvidia-cuda-crt; grulm will build without CUDA graphs" >&2
  fi
  touch "$CRT_MARKER"
fi

# TensorBoard's own reader, for the test that reads grulm's event files back
# (tests/golden/tensorboard_read.py). Not needed to build or run grulm. Checked on
# every set-up (a cheap import lookup) so that a failed install is retried.
TENSORBOARD_VERSION=2.20.0
if ! "$PY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("tensorboard") is None)' 2>/dev/null; then
  echo "grulm setup: installing tensorboard==$TENSORBOARD_VERSION into $VENV (for the tests; about 15 s)" >&2
  "$PY" -m pip install --quiet --disable-pip-version-check "tensorboard==$TENSORBOARD_VERSION" >&2 \
    || echo "grulm setup: could not install tensorboard; the TensorBoard test will fail until it is installed" >&2
fi

echo "export LIBTORCH_USE_PYTORCH=1"
echo "export VIRTUAL_ENV='$VENV'"
echo "export PATH='$VENV/bin':\"\$PATH\""
echo "unset LIBTORCH"
