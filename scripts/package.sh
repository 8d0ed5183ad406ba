#!/usr/bin/env bash
# Builds the release zip of every Lambda function with cargo-lambda: x86_64 always, arm64 when its Rust target is
# installed (`rustup target add aarch64-unknown-linux-gnu`; the template deploys arm64). Each architecture
# gets its own folder: target/lambda/<arch>/<function>/bootstrap.zip. Fails if a function's zip is missing
# or over the size limit.
#   scripts/package.sh [x86_64|arm64|all]     (default: all)
# With WITH_FLOOR=1 the same build also packages `minimal` (bench/minimal-function), the hello-world function
# whose start-up `make bench-runtime` uses as its floor; it is never deployed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

FUNCTIONS=(ingestion analytics default ops)
[ -z "${WITH_FLOOR:-}" ] || FUNCTIONS+=(minimal)
MAX_ZIP_BYTES=$((8 * 1000 * 1000))
want="${1:-all}"

# cargo-lambda (and the Zig it links with) come from the tools venv: `scripts/stack.sh tools`.
TOOLS="$PWD/.local/venv-tools/bin"
[ -x "$TOOLS/cargo-lambda" ] || bash scripts/stack.sh tools
export PATH="$TOOLS:$PATH"

build() {
    local arch="$1" flag="$2" dir="target/lambda/$1"
    local bins=()
    for f in "${FUNCTIONS[@]}"; do bins+=(--bin "$f"); done
    echo "[package] building ${FUNCTIONS[*]} for $arch into $dir"
    cargo lambda build --release "$flag" --output-format zip --lambda-dir "$dir" "${bins[@]}"
    for f in "${FUNCTIONS[@]}"; do
        local zip="$dir/$f/bootstrap.zip"
        [ -f "$zip" ] || { echo "[package] missing $zip" >&2; exit 1; }
        local size
        size=$(stat -c %s "$zip")
        [ "$size" -le "$MAX_ZIP_BYTES" ] || { echo "[package] $zip is $size bytes, over $MAX_ZIP_BYTES" >&2; exit 1; }
        awk -v z="$zip" -v s="$size" 'BEGIN { printf "[package] %-40s %8.2f MB\n", z, s / 1000000 }'
        # The binary beside its zip, for local start-up measurements (`make bench-runtime`).
        python3 -m zipfile -e "$zip" "$dir/$f/" && chmod +x "$dir/$f/bootstrap"
    done
}

case "$want" in
    x86_64|all) build x86_64 --x86-64 ;;
esac
case "$want" in
    arm64|all)
        if rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu; then
            build arm64 --arm64
        elif [ "$want" = arm64 ]; then
            echo "[package] the arm64 target is not installed: rustup target add aarch64-unknown-linux-gnu" >&2; exit 1
        else
            echo "[package] arm64 skipped: its Rust target is not installed (rustup target add aarch64-unknown-linux-gnu)"
        fi
        ;;
esac
