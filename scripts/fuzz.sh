#!/usr/bin/env bash
# Runs every cargo-fuzz target for a fixed time each, on the nightly toolchain. New inputs that reach new
# code are added to fuzz/corpus/<target> (kept in the repository); a crash stops the run with its input in
# fuzz/artifacts/<target>.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-300}"
targets=(envelope sqs_event cron)

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "[fuzz] the nightly toolchain is missing: rustup toolchain install nightly" >&2
    exit 2
fi
if ! command -v cargo-fuzz >/dev/null; then
    echo "[fuzz] installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
cargo +nightly fuzz build
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    before=$(find "corpus/$t" -type f | wc -l)
    echo "[fuzz] $t for ${seconds}s (corpus: $before inputs)"
    log="target/fuzz-$t.log"
    mkdir -p target
    status=0
    cargo +nightly fuzz run "$t" "corpus/$t" -- \
        -max_total_time="$seconds" -max_len=4096 -timeout=10 -print_final_stats=1 >"$log" 2>&1 || status=$?
    grep -E 'Done [0-9]+ runs|stat::number_of_executed_units|stat::peak_rss_mb|ERROR|panicked|SUMMARY' "$log" || true
    after=$(find "corpus/$t" -type f | wc -l)
    if [ "$status" -ne 0 ]; then
        echo "[fuzz] $t FAILED: see fuzz/$log and fuzz/artifacts/$t" >&2
        exit 1
    fi
    echo "[fuzz] $t clean: corpus $before -> $after inputs"
done
