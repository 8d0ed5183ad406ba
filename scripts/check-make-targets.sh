#!/usr/bin/env bash
# Every make target that the README and docs name works as the first command after the set-up
# (`make setup`, or `make test`/`make demo`, which include it): nothing may depend on what another target
# happened to leave behind, such as the `.local/stack.env` that `make provision` writes.
#
# - The cheap targets (seconds each) are run, one by one, each with `.local/stack.env` moved away first.
# - The expensive ones (the tests, the demo, the benchmarks, packaging, fuzzing) and the destructive ones are
#   read, not run: their dry run (`make -n`) must build a binary before running it, provision before reading
#   the queues' env file, and start the local stack before starting a system. CI runs the test and demo
#   targets themselves.
#
# Every target the docs name must be in one of the two lists (tests/it/docs.rs checks that), so a new target
# gets a place here when it gets a mention there. Usage: bash scripts/check-make-targets.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Each entry is a target with the arguments it is run with, as shell words.
cheap=(
    "help"
    "tasks"
    "schedules NEXT=1"
    "template-check"
    "template"
    "stack-status"
    "migrate"
    "provision"
    "status"
    "leases"
    "dlq-report PEEK=1"
    "redrive QUEUE=default"
    "trigger-ping KWARGS='{\"note\":\"make target check\"}'"
    "invoke-ping KWARGS='{\"note\":\"make target check\"}'"
    "ops REQUEST='{\"action\":\"schedules\",\"next\":1}'"
    "chain ID=make-target-check"
    "release-lease KEY=run:make_target_check REASON='checking the make targets'"
    "mcp"
)
# Expensive (minutes) or destructive (purge-dlq, stack-down): read, not run.
not_run=(
    setup stack-up tools build lint fmt stack-down
    demo run test test-unit test-integration test-slow test-faults test-deep
    package fuzz bench-runtime bench-event-source bench-load bench-leases bench-ingest bench-analytics
    purge-dlq
)

failures=()
env_file=.local/stack.env
kept=$(mktemp)
mcp_initialize=$(mktemp)
echo '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"check-make-targets","version":"1"}}}' >"$mcp_initialize"

had_env=0
if [[ -f $env_file ]]; then
    cp "$env_file" "$kept"
    had_env=1
fi
restore() {
    if ((had_env)); then
        mkdir -p .local && cp "$kept" "$env_file"
    fi
    rm -f "$kept" "$mcp_initialize"
}
trap restore EXIT

# Make sure the binaries exist, so that each run below measures the target and not a first build.
make -s build >/dev/null

for entry in "${cheap[@]}"; do
    # An entry is shell words: the target, then NAME=VALUE arguments quoted as one would type them.
    eval "words=($entry)"
    rm -f "$env_file"
    log=$(mktemp)
    input=/dev/null
    if [[ ${words[0]} == mcp ]]; then
        # The MCP server answers a client's first request; stdout must carry nothing but the protocol.
        input=$mcp_initialize
    fi
    if make -s "${words[@]}" <"$input" >"$log" 2>"$log.err"; then
        if [[ ${words[0]} == mcp ]] && ! head -n 1 "$log" | grep -q '^{"jsonrpc":"2.0","id":1,"result":{.*"serverInfo"'; then
            echo "[make-targets] FAILED   make $entry: stdout is not the MCP initialize response" >&2
            sed 's/^/    /' "$log" "$log.err" >&2
            failures+=("make $entry")
        else
            echo "[make-targets] ok       make $entry"
        fi
    else
        echo "[make-targets] FAILED   make $entry" >&2
        sed 's/^/    /' "$log" "$log.err" >&2
        failures+=("make $entry")
    fi
    rm -f "$log" "$log.err"
done

# `make template` on a clean tree must leave nothing to commit.
if ! git diff --quiet -- infra/template.yaml docs/operating.md; then
    echo "[make-targets] FAILED   make template changed what is committed:" >&2
    git diff --stat -- infra/template.yaml docs/operating.md >&2
    failures+=("make template leaves a diff")
fi

# The dry run of a target that is not run here: each binary is built before it runs, the queues' env file is
# written before a command reads it, and what starts a whole system starts the local stack first.
read_dependencies() {
    local target=$1 plan line stack=0 debug=0 profiling=0 provisioned=0 problems=()
    if ! plan=$(make -n "$target" 2>&1); then
        echo "make -n $target failed: $plan"
        return 1
    fi
    while IFS= read -r line; do
        [[ $line == *"scripts/stack.sh up"* ]] && stack=1
        [[ $line == *"cargo build"*"--profile profiling"* ]] && profiling=1
        [[ $line == *"cargo build --workspace --bins"* ]] && debug=1
        if [[ $line =~ target/(debug|profiling)/dualcaster[[:space:]]+([a-z-]+) ]]; then
            local profile=${BASH_REMATCH[1]} command=${BASH_REMATCH[2]}
            if [[ $profile == debug && $debug == 0 ]] || [[ $profile == profiling && $profiling == 0 ]]; then
                problems+=("runs target/$profile/dualcaster $command before building it")
            fi
            case $command in
                # What reads the queues' URLs from .local/stack.env: `dualcaster provision` writes it first.
                enqueue | invoke | ops | status | bench-leases)
                    ((provisioned)) || problems+=("runs dualcaster $command before dualcaster provision") ;;
                # What starts its own system: the stack must be up (a fresh machine has none).
                demo | run | bench-event-source | bench-load | bench-ingest | bench-analytics)
                    ((stack)) || problems+=("runs dualcaster $command before the local stack is started") ;;
            esac
            [[ $command == provision ]] && provisioned=1
        fi
        if [[ $line == "cargo test"* && $line != *"--lib --bins"* ]] && ((!stack)); then
            problems+=("runs the integration tests before the local stack is started")
        fi
    done <<<"$plan"
    if ((${#problems[@]})); then
        printf '%s\n' "${problems[@]}"
        return 1
    fi
}

for target in "${not_run[@]}"; do
    if problems=$(read_dependencies "$target"); then
        echo "[make-targets] read     make $target"
    else
        echo "[make-targets] FAILED   make $target: $problems" >&2
        failures+=("make $target")
    fi
done

if ((${#failures[@]})); then
    echo "[make-targets] ${#failures[@]} target(s) do not work as a first command:" >&2
    printf '  %s\n' "${failures[@]}" >&2
    exit 1
fi
echo "[make-targets] ${#cheap[@]} run, ${#not_run[@]} read: every target works as the first command"
