#!/usr/bin/env bash
# Builds and installs the Python package `ioattn` into a venv and runs its CPU tests.
#
#   scripts/ci-python.sh            # venv at .venv (created if missing), CUDA build only with a GPU
#   IOATTN_VENV=/path/venv  IOATTN_PY_CUDA=ON|OFF  IOATTN_JOBS=N  scripts/ci-python.sh
#
# Steps: (1) venv + dependencies from PyPI (torch, torchvision, numpy, pytest, nanobind, scikit-build-core,
# transformers; ultralytics, pinned, and what it needs at import), skipped when already importable; (2) `pip install --no-build-isolation .` (the C++
# core + nanobind module through scikit-build-core, build tree build-py/; extra CMake options via
# CMAKE_ARGS); without a GPU the CUDA backends are left out (IOATTN_WITH_CUDA=OFF): the main build
# compiles them already and they could not run here; (3) pytest tests/python without test_cuda.py (the GPU
# script runs that file). Exit status: pytest's.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${IOATTN_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
export CMAKE_BUILD_PARALLEL_LEVEL="${IOATTN_JOBS:-2}"
start=$(date +%s)

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating venv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
# torch and torchvision in one resolve: pip then picks the newest torch that has its torchvision
# (a torch release can reach PyPI before its torchvision does).
if ! "$PY" -c "import torch, torchvision, numpy, pytest, nanobind, scikit_build_core, transformers" 2>/dev/null; then
  echo "== installing dependencies (torch is the CUDA-enabled PyPI wheel: several GB on first install)"
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q torch torchvision numpy pytest nanobind scikit-build-core transformers
fi

# Ultralytics for tests/python/test_ultralytics.py (YOLO12 through ioattn.integrations.ultralytics): the
# pinned release with --no-deps, plus only what importing it and building a model need. Its other
# requirements (polars, psutil, requests, nvidia-ml-py, ultralytics-platform: trainer, exporter, hub) are
# not imported there. torchvision (read only as metadata at import, but it must be the release paired
# with torch) came with torch above. With IOATTN_REQUIRE_ULTRALYTICS=1 a missing ultralytics fails
# those tests instead of skipping them.
ULTRALYTICS_PIN=8.4.190
THOP_PIN=2.2.3  # (scripts/gpu_check.sh --fetch-wheels reads both pins from here)
if ! "$PY" -c "import importlib.metadata as m, cv2, PIL, torchvision; assert m.version('ultralytics') == '$ULTRALYTICS_PIN'" 2>/dev/null; then
  echo "== installing ultralytics $ULTRALYTICS_PIN (opencv-python-headless, pillow)"
  "$PY" -m pip install -q --no-deps "ultralytics==$ULTRALYTICS_PIN" "ultralytics-thop==$THOP_PIN" opencv-python-headless pillow
fi
export IOATTN_REQUIRE_ULTRALYTICS=1

if [ -z "${IOATTN_PY_CUDA:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    IOATTN_PY_CUDA=ON
  else
    IOATTN_PY_CUDA=OFF
  fi
fi
echo "== pip install . (IOATTN_WITH_CUDA=$IOATTN_PY_CUDA)"
# CMAKE_ARGS rather than -C cmake.define.*: older pip / scikit-build-core pairs reject the latter.
CMAKE_ARGS="${CMAKE_ARGS:-} -DIOATTN_WITH_CUDA=$IOATTN_PY_CUDA" "$PY" -m pip install -q --no-build-isolation "$ROOT"
built=$(date +%s)
echo "== build + install: $((built - start)) s"

cd "$ROOT"
status=0
"$PY" -m pytest tests/python -q -p no:cacheprovider --ignore=tests/python/test_cuda.py || status=$?
echo "== pytest: $(( $(date +%s) - built )) s (total $(( $(date +%s) - start )) s), exit $status"
exit $status
