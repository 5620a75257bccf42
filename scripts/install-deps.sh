#!/usr/bin/env bash
# Installs the system packages IOAttention builds and tests with, on Debian 12 / Ubuntu 22.04+.
# Idempotent: packages already present are left alone, and apt-get runs only when one is missing.
# Runs as root, or through sudo when not root. The CUDA toolkit (nvcc >= 12, for sm_90a) is not an
# apt package of Debian; install it from NVIDIA when building the GPU backends. Without nvcc the
# build is CPU-only.
set -euo pipefail

packages=(
  cmake ninja-build g++ pkg-config git
  libopenblas-openmp-dev   # BLAS for the CPU backend and the CPU benchmark's baselines
  libcli11-dev             # the `ioattn` program's flags
  nlohmann-json3-dev       # `ioattn run --json`, benchmark result files
  libgtest-dev googletest  # C++ tests
  libbenchmark-dev         # microbenchmarks
  python3-dev python3-pip python3-venv  # the Python package and its tests
)

missing=()
for p in "${packages[@]}"; do
  # dpkg-query prints "install ok installed" only for a fully installed package.
  if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]]; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages already installed"
  exit 0
fi

if ((EUID == 0)); then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "install-deps: not root and no sudo; please install: ${missing[*]}" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
