#!/usr/bin/env bash
# Fuzzing kiln's parsers (fuzz/, cargo-fuzz on stable Rust; see fuzz/README.md).
#
#   scripts/fuzz.sh smoke              every target for 30 s from the generated seeds
#   scripts/fuzz.sh run [SECS] [T...]  every target (or T...) for SECS seconds each (default 600),
#                                      one after another (the machine has 2 cores)
#   scripts/fuzz.sh runs N [T...]      every target for N executions each
#   scripts/fuzz.sh merge [T...]       minimize corpus/<T> + seeds into the committed fuzz/regress/<T>
#                                      (libFuzzer -merge=1; inputs over 16 KB are left out) and
#                                      add every crash in artifacts/<T> (the smoke test replays it)
#   FUZZ_ASAN=1 scripts/fuzz.sh ...    with AddressSanitizer (RUSTC_BOOTSTRAP=1, ~5x slower)
#
# CI runs the target bodies over fuzz/regress/ without libFuzzer (tests/tests/fuzz_smoke.rs).
# Seeds are generated (never committed): the hostile corpus' files and small valid models
# (tests/hostile/gen.rs), the golden models under 100 KB and ../shared/testdata. New inputs
# libFuzzer finds go to fuzz/corpus/<target>/ (git-ignored); crashes to fuzz/artifacts/. Each
# run stops at the first crash, timeout (> 2 s) or OOM (> 2 GB) and prints its log.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGETS=(onnx ckpt safetensors mindir mindir_encrypted air om npy kir fusion_switch)

mode="${1:-smoke}"
shift || true

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz" >&2
  cargo install --locked cargo-fuzz@0.13.2
fi

sanitizer=(-s none)
if [[ "${FUZZ_ASAN:-0}" == 1 ]]; then
  export RUSTC_BOOTSTRAP=1
  sanitizer=(-s address)
fi

seeds="$ROOT/fuzz/seeds"
rm -rf "$seeds"
mkdir -p "$seeds"
KILN_FUZZ_SEEDS="$seeds" cargo test -q -p kiln-compiler --test hostile -- --ignored --exact \
  write_fuzz_seeds >/dev/null
for f in golden/models/*.onnx; do
  [[ -f "$f" && $(stat -c %s "$f") -lt 100000 ]] && cp "$f" "$seeds/onnx/golden_$(basename "$f")"
done
for f in tests/filetests/*/*.kir; do cp "$f" "$seeds/kir/filetest_$(basename "$f")"; done
if [[ -d ../shared/testdata ]]; then
  cp ../shared/testdata/onnx/*.onnx "$seeds/onnx/" 2>/dev/null || true
  cp ../shared/testdata/mindspore/*.ckpt "$seeds/ckpt/" 2>/dev/null || true
  for f in ../shared/testdata/om/*.om; do
    [[ $(stat -c %s "$f") -lt 1000000 ]] && cp "$f" "$seeds/om/"
  done
  for f in ../shared/testdata/mindspore/*.mindir; do
    case "$f" in
      *aes*) { printf '\0'; cat "$f"; } >"$seeds/mindir_encrypted/shared_$(basename "$f")" ;;
      *) cp "$f" "$seeds/mindir/" ;;
    esac
  done
fi

cd fuzz
cargo fuzz build "${sanitizer[@]}" >&2

fuzz_one() { # target, libFuzzer limit flag
  local t="$1" limit="$2"
  mkdir -p "corpus/$t" "artifacts/$t" logs
  local start=$SECONDS
  local status=0
  cargo fuzz run "${sanitizer[@]}" "$t" "corpus/$t" "seeds/$t" -- \
    -dict="dict/$t.dict" -timeout=2 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="artifacts/$t/" "$limit" \
    >"logs/$t.log" 2>&1 || status=$?
  local execs crashes
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$' || echo '?')
  crashes=$(find "artifacts/$t" -type f | wc -l)
  printf '%-18s %12s execs %6d s  status %d  artifacts %d\n' "$t" "$execs" $((SECONDS - start)) "$status" "$crashes"
  if [[ $status -ne 0 ]]; then
    tail -n 40 "logs/$t.log" >&2
    return 1
  fi
}

pick() { if [[ $# -gt 0 ]]; then echo "$@"; else echo "${TARGETS[@]}"; fi; }

failed=0
case "$mode" in
  smoke)
    for t in $(pick "$@"); do fuzz_one "$t" -max_total_time=30 || failed=1; done ;;
  run)
    secs="${1:-600}"; shift || true
    for t in $(pick "$@"); do fuzz_one "$t" "-max_total_time=$secs" || failed=1; done ;;
  merge)
    for t in $(pick "$@"); do
      rm -rf "regress.new/$t" && mkdir -p "regress.new/$t" "corpus/$t" "artifacts/$t" logs
      cargo fuzz run "${sanitizer[@]}" "$t" "regress.new/$t" "corpus/$t" "seeds/$t" -- \
        -merge=1 -max_len=16384 -timeout=2 -rss_limit_mb=2048 >"logs/$t.merge.log" 2>&1 || failed=1
      find "regress.new/$t" -type f -size +16k -delete
      for c in "artifacts/$t"/*; do [[ -f "$c" ]] && cp "$c" "regress.new/$t/"; done
      rm -rf "regress/$t" && mkdir -p regress && mv "regress.new/$t" "regress/$t"
      printf '%-18s %5d files %8s\n' "$t" "$(find "regress/$t" -type f | wc -l)" "$(du -sh "regress/$t" | cut -f1)"
    done
    rm -rf regress.new ;;
  runs)
    n="${1:?runs N}"; shift
    for t in $(pick "$@"); do fuzz_one "$t" "-runs=$n" || failed=1; done ;;
  *)
    echo "usage: $0 smoke | run [SECS] [TARGET...] | runs N [TARGET...] | merge [TARGET...]" >&2
    exit 2 ;;
esac
exit "$failed"
