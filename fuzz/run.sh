#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for a bounded time: a smoke run by default.
#
#   bash fuzz/run.sh                      # all targets, 15 s each (about 2.5 min plus the build)
#   FUZZ_SECONDS=600 bash fuzz/run.sh css # one target, longer
#
# Stable Rust is enough. cargo-fuzz needs nightly only for sanitizers (it passes -Zsanitizer)
# and -Zbuild-std; with `--sanitizer none` it builds with stable-only flags (-Cpasses=sancov-module,
# -Cllvm-args=-sanitizer-coverage-*, --cfg fuzzing), and libfuzzer-sys compiles libFuzzer with
# the system C++ compiler. So this is real coverage-guided libFuzzer on stable, without
# AddressSanitizer, which safe Rust does not need (tamis has no `unsafe`). Needs:
#   cargo install cargo-fuzz --locked     # once; also needs a C++ compiler (g++ or clang++)
#
# Each target reads its committed seeds from fuzz/corpus/<target>/ and grows its working corpus
# in fuzz/work/<target>/ (ignored by git). A failing input is saved in fuzz/artifacts/<target>/;
# reproduce with: cargo fuzz run --sanitizer none <target> fuzz/artifacts/<target>/<file>
set -euo pipefail
cd "$(dirname "$0")"

seconds=${FUZZ_SECONDS:-15}
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}

if ! command -v cargo-fuzz >/dev/null; then
  echo "cargo-fuzz is not installed: cargo install cargo-fuzz --locked" >&2
  exit 2
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

dict_for() {
  case "$1" in
    plausible | umami) echo dicts/json.dict ;;
    *) [ -f "dicts/$1.dict" ] && echo "dicts/$1.dict" ;;
  esac
}

# One build for all targets: release, debug assertions and overflow checks on, no sanitizer.
cargo fuzz build --sanitizer none --debug-assertions

failed=()
summary=()
for t in "${targets[@]}"; do
  mkdir -p "work/$t" "corpus/$t"
  args=(-max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048
    -max_len=8192 -report_slow_units=5)
  if dict=$(dict_for "$t"); then
    args+=(-dict="$dict")
  fi
  log="work/$t.log"
  echo "== $t (${seconds}s)"
  if cargo fuzz run --sanitizer none --debug-assertions "$t" "work/$t" "corpus/$t" \
    -- "${args[@]}" >"$log" 2>&1; then
    status=ok
  else
    status=FAILED
    failed+=("$t")
    grep -E "panicked at|^thread|SUMMARY|Test unit written|Base64" -A2 "$log" | head -40 >&2 || true
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1 || true)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1 || true)
  cov=$( (grep -Eo 'cov: [0-9]+' "$log" || true) | tail -1 | cut -d' ' -f2)
  corpus=$(find "work/$t" -type f | wc -l)
  summary+=("$(printf '%-10s %-7s %9s runs %7s exec/s  cov %5s  corpus %5s' \
    "$t" "$status" "${runs:-?}" "${rate:-?}" "${cov:-?}" "$corpus")")
done

echo
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failing targets: ${failed[*]} (inputs in fuzz/artifacts/, logs in fuzz/work/*.log)" >&2
  exit 1
fi
