#!/usr/bin/env bash
# kiln's CPU back end links LLVM 14 (inkwell, llvm14-0-prefer-dynamic: libLLVM-14.so) to generate
# its wide-vector kernels. Debian 12 ships it as llvm-14-dev; install it when missing.
set -euo pipefail
if command -v llvm-config-14 >/dev/null 2>&1 || { command -v llvm-config >/dev/null 2>&1 && llvm-config --version | grep -q '^14\.'; }; then
    exit 0
fi
echo "setup-llvm: llvm-config-14 not found; installing llvm-14-dev" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq llvm-14-dev >/dev/null
