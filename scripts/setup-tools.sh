#!/usr/bin/env bash
# System tools for the integration tests (issue 19): CMake (examples/c), the aarch64 cross
# toolchain and qemu-user (cross-compiled artefacts run under emulation), Graphviz-free
# headless Chromium (the HTML report is rendered in a real browser). Idempotent: installs
# only what is missing. Debian 12 package names.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have cmake || need+=(cmake)
have qemu-aarch64 || need+=(qemu-user)
have aarch64-linux-gnu-gcc || need+=(gcc-aarch64-linux-gnu)
[ -f /usr/aarch64-linux-gnu/lib/libc.so.6 ] || need+=(libc6-dev-arm64-cross)
have chromium || need+=(chromium)
have script || need+=(bsdutils)
if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
echo "setup-tools: installing ${need[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
