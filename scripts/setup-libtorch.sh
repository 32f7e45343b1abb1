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

echo "export LIBTORCH_USE_PYTORCH=1"
echo "export VIRTUAL_ENV='$VENV'"
echo "export PATH='$VENV/bin':\"\$PATH\""
echo "unset LIBTORCH"
