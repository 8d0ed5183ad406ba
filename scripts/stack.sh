#!/usr/bin/env bash
# The local AWS stack: Postgres, LocalStack (SQS, EventBridge, CloudFormation, ...) and moto behind it for
# DynamoDB. Idempotent: `up` starts what is not running, `down` stops what it started, `status` reports.
#
# With a Docker engine the same services come from infra/local/docker-compose.yml; without one they run on
# the host (Debian's Postgres 15, LocalStack in a Python 3.12+ venv, moto in a Python venv).
#
# Environment: DD_STACK_DIR (state, venvs, logs; default .local), PGPORT (5432), LOCALSTACK_PORT (4566),
# MOTO_PORT (4510).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${DD_STACK_DIR:-$ROOT/.local}"
LOGS="$STATE/logs"
RUN="$STATE/run"
PGPORT="${PGPORT:-5432}"
LOCALSTACK_PORT="${LOCALSTACK_PORT:-4566}"
MOTO_PORT="${MOTO_PORT:-4510}"
DB_ROLE=app
DB_PASSWORD=app
DB_NAME=app

LOCALSTACK_PINS=("localstack-core[runtime]==2026.3.0" "cbor2<6" "pyopenssl>=25.1,<26" "cryptography>=45,<46" "service_identity")
MOTO_PINS=("moto[server]==5.2.5")
# aws-sam-cli bundles cfn-lint (1.58.0 with this pin); checkov scans the template for misconfigurations.
TOOL_PINS=("aws-sam-cli==1.170.0" "cargo-lambda==1.9.2")
# Its own venv: checkov's dependencies do not resolve together with the SAM CLI's.
CHECKOV_PINS=("checkov==3.3.30")

mkdir -p "$LOGS" "$RUN"

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

docker_available() {
    [ "${DD_STACK_NO_DOCKER:-}" = 1 ] && return 1
    command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1
}

# --- Postgres -------------------------------------------------------------------------------------------

pg_cluster() {
    # Prints "version cluster" of the first cluster, if any.
    command -v pg_lsclusters >/dev/null 2>&1 || return 0
    pg_lsclusters --no-header 2>/dev/null | awk 'NR==1 {print $1, $2}'
}

postgres_ready() {
    pg_isready -q -h 127.0.0.1 -p "$PGPORT" 2>/dev/null
}

postgres_up() {
    if ! command -v pg_lsclusters >/dev/null 2>&1; then
        log "installing PostgreSQL from Debian"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql >/dev/null
    fi
    local cluster
    cluster="$(pg_cluster)"
    [ -n "$cluster" ] || die "no PostgreSQL cluster found (pg_lsclusters is empty)"
    if ! postgres_ready; then
        log "starting PostgreSQL cluster $cluster"
        # shellcheck disable=SC2086
        as_root pg_ctlcluster $cluster start || true
        for _ in $(seq 1 50); do postgres_ready && break; sleep 0.2; done
        postgres_ready || die "PostgreSQL did not become ready on 127.0.0.1:$PGPORT"
    fi
    # A role and database that work with peer auth on the socket and password auth on TCP. The role may
    # create roles: the tests rotate the password of a role of their own.
    local psql=(runuser -u postgres -- psql -qAtX -p "$PGPORT")
    [ "$(id -u)" = 0 ] || psql=(sudo -u postgres psql -qAtX -p "$PGPORT")
    if [ "$("${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname = '$DB_ROLE'")" != 1 ]; then
        "${psql[@]}" -c "CREATE ROLE $DB_ROLE LOGIN CREATEDB CREATEROLE PASSWORD '$DB_PASSWORD'"
    else
        "${psql[@]}" -c "ALTER ROLE $DB_ROLE LOGIN CREATEDB CREATEROLE PASSWORD '$DB_PASSWORD'"
    fi
    if [ "$("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" != 1 ]; then
        "${psql[@]}" -c "CREATE DATABASE $DB_NAME OWNER $DB_ROLE"
    fi
    log "PostgreSQL ready: postgresql://$DB_ROLE:***@127.0.0.1:$PGPORT/$DB_NAME"
}

postgres_down() {
    local cluster
    cluster="$(pg_cluster)"
    # shellcheck disable=SC2086
    [ -n "$cluster" ] && postgres_ready && as_root pg_ctlcluster $cluster stop || true
}

# --- Python tools -------------------------------------------------------------------------------------

python312() {
    # A Python >= 3.12 interpreter: LocalStack fails to start on 3.11.
    local candidate version
    for candidate in python3.13 python3.12 python3; do
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
            command -v "$candidate"; return 0
        fi
    done
    if command -v pyenv >/dev/null 2>&1; then
        for version in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[2-9]|[2-9][0-9])(\.|$)' | sort -t. -k2,2nr -k3,3nr); do
            candidate="$(pyenv root)/versions/$version/bin/python3"
            if [ -x "$candidate" ]; then echo "$candidate"; return 0; fi
        done
    fi
    return 1
}

# uv installs the venvs: it downloads in parallel and skips compiling every module up front, which takes the
# five venvs from about five minutes with pip to about one. pip stays the fallback when uv cannot be had.
UV_PIN="uv==0.13.9"

uv_bin() {
    # The path of a pinned uv in its own small venv, installed on first use; fails if it cannot be installed.
    local dir="$STATE/venv-uv"
    if [ ! -x "$dir/bin/uv" ] || [ "$(cat "$dir/.pins" 2>/dev/null)" != "$UV_PIN" ]; then
        rm -rf "$dir"
        python3 -m venv "$dir" || return 1
        "$dir/bin/pip" install -q --disable-pip-version-check "$UV_PIN" >"$LOGS/venv-uv-pip.log" 2>&1 || return 1
        echo "$UV_PIN" > "$dir/.pins"
    fi
    echo "$dir/bin/uv"
}

ensure_venv() {
    # ensure_venv DIR PYTHON PINS...: creates DIR with PYTHON and installs PINS once (stamped by their list).
    local dir="$1" python="$2"; shift 2
    local stamp="$dir/.pins" want="$*" name uv
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
    name="$(basename "$dir")"
    log "creating $name with $("$python" --version 2>&1)"
    rm -rf "$dir"
    if uv="$(uv_bin)" && "$python" -m venv --without-pip "$dir" \
        && UV_LINK_MODE=copy "$uv" pip install -q --python "$dir/bin/python" "$@" >"$LOGS/$name-uv.log" 2>&1; then
        echo "$want" > "$stamp"
        return 0
    fi
    log "uv could not install $name (see $LOGS/$name-uv.log); installing it with pip"
    rm -rf "$dir"
    "$python" -m venv "$dir"
    "$dir/bin/pip" install -q --disable-pip-version-check "$@" >"$LOGS/$name-pip.log" 2>&1 \
        || { tail -20 "$LOGS/$name-pip.log" >&2; die "pip install failed for $name"; }
    echo "$want" > "$stamp"
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_http() {
    # wait_http URL SECONDS
    local deadline=$((SECONDS + $2))
    until curl -fsS -o /dev/null "$1" 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.3
    done
}

# --- moto (DynamoDB) ----------------------------------------------------------------------------------

moto_ready() { curl -fsS -o /dev/null "http://127.0.0.1:$MOTO_PORT/moto-api/" 2>/dev/null; }

moto_up() {
    if pid_alive "$RUN/moto.pid" || moto_ready; then return 0; fi
    ensure_venv "$STATE/venv-moto" "$(command -v python3)" "${MOTO_PINS[@]}"
    log "starting moto on 127.0.0.1:$MOTO_PORT"
    # One request at a time, so conditional writes are atomic as in DynamoDB (see scripts/moto_server.py).
    nohup "$STATE/venv-moto/bin/python" "$ROOT/scripts/moto_server.py" -H 127.0.0.1 -p "$MOTO_PORT" >"$LOGS/moto.log" 2>&1 &
    echo $! > "$RUN/moto.pid"
    wait_http "http://127.0.0.1:$MOTO_PORT/moto-api/" 30 || die "moto did not start (see $LOGS/moto.log)"
}

# --- LocalStack ---------------------------------------------------------------------------------------

localstack_health() { curl -fsS "http://127.0.0.1:$LOCALSTACK_PORT/_localstack/health" 2>/dev/null; }

localstack_up() {
    if localstack_health >/dev/null; then return 0; fi
    local python
    python="$(python312)" || die "LocalStack needs Python >= 3.12 and none was found (install python3.12, or a 3.12+ version under pyenv)"
    ensure_venv "$STATE/venv-localstack" "$python" "${LOCALSTACK_PINS[@]}"
    mkdir -p "$STATE/localstack-volume"
    log "starting LocalStack on 127.0.0.1:$LOCALSTACK_PORT (DynamoDB via moto on $MOTO_PORT)"
    GATEWAY_LISTEN="127.0.0.1:$LOCALSTACK_PORT" LOCALSTACK_HOST="127.0.0.1:$LOCALSTACK_PORT" \
        SQS_ENDPOINT_STRATEGY=path DISABLE_EVENTS=1 SKIP_SSL_CERT_DOWNLOAD=1 DNS_ADDRESS=0 \
        DYNAMODB_LOCAL_PORT="$MOTO_PORT" LOCALSTACK_VOLUME_DIR="$STATE/localstack-volume" \
        nohup "$STATE/venv-localstack/bin/python" -m localstack.runtime.main >"$LOGS/localstack.log" 2>&1 &
    echo $! > "$RUN/localstack.pid"
    wait_http "http://127.0.0.1:$LOCALSTACK_PORT/_localstack/health" 90 \
        || { tail -30 "$LOGS/localstack.log" >&2; die "LocalStack did not start (see $LOGS/localstack.log)"; }
    # The first DynamoDB call is slow (moto warms up): make it here rather than in a test.
    AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1 \
        curl -fsS -o /dev/null -X POST "http://127.0.0.1:$LOCALSTACK_PORT/" \
        -H 'X-Amz-Target: DynamoDB_20120810.ListTables' -H 'Content-Type: application/x-amz-json-1.0' \
        -H 'Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=0' \
        -d '{}' || log "warning: DynamoDB warm-up call failed"
}

stop_pid() {
    local file="$1" name="$2"
    if pid_alive "$file"; then
        log "stopping $name"
        kill "$(cat "$file")" 2>/dev/null || true
        for _ in $(seq 1 50); do pid_alive "$file" || break; sleep 0.2; done
        pid_alive "$file" && kill -9 "$(cat "$file")" 2>/dev/null || true
    fi
    rm -f "$file"
}

# --- template tooling ---------------------------------------------------------------------------------

tools_up() {
    ensure_venv "$STATE/venv-tools" "$(command -v python3)" "${TOOL_PINS[@]}"
    ensure_venv "$STATE/venv-checkov" "$(command -v python3)" "${CHECKOV_PINS[@]}"
    log "template tools ready: $("$STATE/venv-tools/bin/sam" --version 2>/dev/null), $("$STATE/venv-tools/bin/cfn-lint" --version 2>/dev/null), checkov $("$STATE/venv-checkov/bin/checkov" --version 2>/dev/null)"
}

# --- commands -----------------------------------------------------------------------------------------

restart_postgres() {
    if docker_available; then
        local compose=(docker compose -f "$ROOT/infra/local/docker-compose.yml")
        "${compose[@]}" stop postgres; sleep "$1"; "${compose[@]}" up -d --wait postgres
        return
    fi
    postgres_down
    sleep "$1"
    postgres_up
}

up() {
    if docker_available; then
        log "Docker engine found: using infra/local/docker-compose.yml"
        docker compose -f "$ROOT/infra/local/docker-compose.yml" up -d --wait
        return
    fi
    postgres_up
    moto_up
    localstack_up
    log "LocalStack ready: http://127.0.0.1:$LOCALSTACK_PORT"
}

down() {
    if docker_available; then
        docker compose -f "$ROOT/infra/local/docker-compose.yml" down
        return
    fi
    stop_pid "$RUN/localstack.pid" LocalStack
    stop_pid "$RUN/moto.pid" moto
    if [ "${1:-}" = "--all" ]; then postgres_down; fi
}

status() {
    local rc=0
    if postgres_ready; then echo "postgres   up    127.0.0.1:$PGPORT"; else echo "postgres   down"; rc=1; fi
    if moto_ready; then echo "moto       up    127.0.0.1:$MOTO_PORT"; else echo "moto       down"; rc=1; fi
    if localstack_health >/dev/null; then echo "localstack up    127.0.0.1:$LOCALSTACK_PORT"; else echo "localstack down"; rc=1; fi
    return $rc
}

case "${1:-}" in
    up) up ;;
    down) shift; down "$@" ;;
    status) status ;;
    restart-localstack) stop_pid "$RUN/localstack.pid" LocalStack; localstack_up ;;
    # Stops Postgres for SECONDS (default 0), then starts it again: the fault tests' database outage.
    restart-postgres) restart_postgres "${2:-0}" ;;
    tools) tools_up ;;
    *) echo "usage: $0 up | down [--all] | status | tools | restart-postgres [SECONDS] | restart-localstack" >&2; exit 2 ;;
esac
