#!/usr/bin/env bash
# kiln links LLVM 19 (inkwell, llvm19-1-prefer-dynamic: libLLVM-19.so) for the CPU back end's
# wide-vector kernels and NVPTX (the shared layer targets/llvm). Debian 12 ships it in bookworm
# main as llvm-19-dev (~100 MB of debs, ~12 s); install it when missing. llvm-sys finds it as
# llvm-config-19 on PATH.
set -euo pipefail
if command -v llvm-config-19 >/dev/null 2>&1 || { command -v llvm-config >/dev/null 2>&1 && llvm-config --version | grep -q '^19\.'; }; then
    exit 0
fi
echo "setup-llvm: llvm-config-19 not found; installing llvm-19-dev" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq llvm-19-dev >/dev/null
