#!/usr/bin/env bash
# Memory-safety checks (figures in docs/robustness.md):
#
#   scripts/sanitize.sh asan      AddressSanitizer (stable Rust with RUSTC_BOOTSTRAP=1) over the
#                                 runtime crate's tests, the generated-code tests (JIT: op
#                                 statuses, ops vs the interpreter; JIT and .so: the load test)
#                                 and the kiln binary on the hostile corpus
#   scripts/sanitize.sh valgrind  valgrind memcheck over generated executables (golden models
#                                 built with --target-cpu x86-64-v3: valgrind cannot decode
#                                 AVX-512), 1 and 2 threads, and over a Rust program loading a
#                                 generated .so through the runtime
#   scripts/sanitize.sh           both
#
# ASan instruments the Rust code (the runtime, the compiler, the tests' buffers); generated
# code is not instrumented, so its stray accesses show only where they hit instrumented
# checks. valgrind checks every instruction, generated code included.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
what="${1:-all}"
HOST=x86_64-unknown-linux-gnu

asan() {
  echo "== AddressSanitizer"
  # --target keeps the sanitizer out of build scripts and proc macros; a target dir of its own
  export RUSTC_BOOTSTRAP=1
  export RUSTFLAGS="-Zsanitizer=address -Cforce-frame-pointers=yes"
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1"
  # leaks inside LLVM's own static state at exit are not ours
  export LSAN_OPTIONS="suppressions=$ROOT/scripts/lsan.supp:print_suppressions=0"
  local t=(--target "$HOST" --target-dir target/asan)
  cargo test "${t[@]}" -p kiln-runtime
  cargo test "${t[@]}" -p kiln-target-cpu --test statuses --test ops_vs_interp
  cargo test "${t[@]}" -p kiln-tests --test load
  cargo test "${t[@]}" -p kiln-compiler --test hostile --test cli
  unset RUSTC_BOOTSTRAP RUSTFLAGS
}

valgrind_exes() {
  echo "== valgrind memcheck"
  command -v valgrind >/dev/null || { apt-get install -y valgrind >/dev/null; }
  cargo build -q -p kiln-compiler
  local kiln="$ROOT/target/debug/kiln" dir
  dir="$(mktemp -d)"
  trap 'rm -rf "$dir"' RETURN
  local models=(lenet5 squeezenet1_1 mobilenetv2 tiny_ops encoder)
  local ran=0
  for m in "${models[@]}"; do
    [[ -f golden/models/$m.onnx ]] || { echo "skip $m: golden/models/$m.onnx missing (scripts/setup.sh)"; continue; }
    "$kiln" build "golden/models/$m.onnx" --emit exe --target-cpu x86-64-v3 -o "$dir/$m"
    local ins=()
    for f in golden/data/$m/input_*.npy; do ins+=(--input "$f"); done
    for threads in 1 2; do
      mkdir -p "$dir/out_$m"
      valgrind --error-exitcode=99 --vex-guest-max-insns=25 --leak-check=full --errors-for-leak-kinds=definite,indirect \
        --track-origins=yes -q "$dir/$m" "${ins[@]}" --threads "$threads" --output-dir "$dir/out_$m" \
        2>"$dir/$m.$threads.log" || { cat "$dir/$m.$threads.log"; echo "valgrind: $m --threads $threads failed"; return 1; }
      echo "$m --threads $threads: no errors ($(grep -c . "$dir/$m.$threads.log" || true) lines of valgrind output)"
      ran=$((ran + 1))
    done
  done
  echo "valgrind: $ran runs clean"
}

case "$what" in
  asan) asan ;;
  valgrind) valgrind_exes ;;
  all) asan; valgrind_exes ;;
  *) echo "usage: $0 [asan|valgrind]" >&2; exit 2 ;;
esac
