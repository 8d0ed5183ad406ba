# Dualcaster Deals task platform. `make help` lists the targets.
SHELL := /bin/bash
CARGO ?= cargo
CLI := ./target/debug/dualcaster
KWARGS ?= {}
comma := ,

.PHONY: status chain help setup tools test-slow stack-up stack-down stack-status build migrate demo test test-unit test-integration lint fmt tasks provision leases release-lease bench-leases template template-check schedules bench-ingest bench-analytics bench-runtime package dlq-report redrive purge-dlq bench-event-source run mcp ops fuzz bench-load test-faults test-deep

help: ## List the targets
	@grep -E '^[a-zA-Z_%-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-20s %s\n", $$1, $$2}'

setup: stack-up tools build ## Start the local stack, install the template tools, build everything

stack-up: ## Start Postgres, moto and LocalStack (installs what is missing)
	bash scripts/stack.sh up

tools: ## Install the pinned template tools (sam, cfn-lint) into .local/venv-tools
	bash scripts/stack.sh tools

stack-down: ## Stop LocalStack and moto (`scripts/stack.sh down --all` also stops Postgres)
	bash scripts/stack.sh down

stack-status: ## Show what is running
	bash scripts/stack.sh status

build: ## Build the function binaries and the CLI (debug)
	$(CARGO) build --workspace --bins

migrate: build ## Apply the migrations to DATABASE_URL (default: the local database)
	DATABASE_URL=$${DATABASE_URL:-postgresql://app:app@127.0.0.1:5432/app} $(CLI) migrate

run: setup ## The whole system here until Ctrl-C: functions under cargo lambda watch (Invoke API :9000), fed from their queues, schedules firing
	DATABASE_URL=$${DATABASE_URL:-postgresql://app:app@127.0.0.1:5432/app} $(CLI) run

ops: provision ## An operator action (the ops function's payload): make ops REQUEST='{"action":"schedules"}' [ENDPOINT=http://127.0.0.1:9000]
	$(CLI) ops '$(REQUEST)' $(if $(ENDPOINT),--endpoint $(ENDPOINT))

# stdout is the MCP stream: the build and the provisioning before the server print to stderr only.
mcp: ## The operators' MCP server on stdio (for an assistant's MCP client configuration)
	@$(CARGO) build --quiet --workspace --bins >&2
	@$(CLI) provision >&2
	@$(CLI) mcp

demo: setup ## The main job: the whole system on this machine, end to end
	DATABASE_URL=$${DATABASE_URL:-postgresql://app:app@127.0.0.1:5432/app} $(CLI) demo

test: setup ## Every test: unit and integration (starts the local stack)
	$(CARGO) test --workspace

test-slow: setup ## Tests that wait on real time, like a real EventBridge rule firing (about a minute)
	$(CARGO) test -p integration-tests -- --ignored --skip disruptive::

test-faults: setup ## Fault scenarios that stop shared services (Postgres), one at a time; prints their counts
	$(CARGO) test -p integration-tests -- --include-ignored --test-threads=1 --nocapture disruptive:: faults::

test-deep: setup ## The model-based and generated tests with many more cases (DD_TEST_SEED=<32 hex digits> for another seed)
	DD_TEST_DEEP=1 $(CARGO) test -p integration-tests --test model -- --nocapture

test-unit: ## Unit tests only (no services needed)
	$(CARGO) test --workspace --lib --bins

test-integration: setup ## Integration tests only
	$(CARGO) test -p integration-tests

lint: ## rustfmt (the workspace and the fuzz targets) and clippy, warnings are errors
	$(CARGO) fmt --all --check
	$(CARGO) fmt --all --check --manifest-path fuzz/Cargo.toml
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format every Rust file (the workspace and the fuzz targets)
	$(CARGO) fmt --all
	$(CARGO) fmt --all --manifest-path fuzz/Cargo.toml

tasks: build ## List registered tasks, their queues and retry policies
	$(CLI) tasks

provision: build ## Create the template's queues in LocalStack and write .local/stack.env
	$(CLI) provision

trigger-%: provision ## Enqueue a task on its queue: make trigger-ping KWARGS='{"note":"hi"}' (DIRECT=1: invoke its function through the Invoke API of `make run`)
	$(if $(DIRECT),$(CLI) invoke $* --kwargs '$(KWARGS)' --endpoint $(or $(ENDPOINT),http://127.0.0.1:9000),$(CLI) enqueue $* --kwargs '$(KWARGS)')

invoke-%: provision ## Run a task here and print its report: make invoke-dlq_report KWARGS='{"peek":3}'
	$(CLI) invoke $* --kwargs '$(KWARGS)'

leases: provision ## List held single-instance leases (KIND=idempotency for delivery records)
	$(CLI) ops '{"action":"leases","kind":"$(or $(KIND),run)"}'

release-lease: provision ## Force-release a lease: make release-lease KEY=run:dlq_report REASON='why'
	@test -n "$(KEY)" && test -n "$(REASON)" || { echo "usage: make release-lease KEY=<key> REASON=<why>"; exit 2; }
	$(CLI) ops '{"action":"release_lease","key":"$(KEY)","reason":"$(REASON)"}'

bench-leases: provision ## Lease acquire/renew/release latency against LocalStack (median, p95)
	$(CLI) bench-leases --rounds $(or $(ROUNDS),300)

template: build ## Regenerate the generated blocks of infra/template.yaml (schedules; dashboard and alarms) from the registry
	$(CLI) template sync

template-check: build ## Fail if the template drifted from the registry or breaks a deployment rule
	$(CLI) template check

schedules: build ## List every schedule with its next fire times: make schedules NEXT=5
	$(CLI) schedules --next $(or $(NEXT),3)

package: ## Release zips of every function (cargo-lambda): target/lambda/{x86_64,arm64}/<function>/bootstrap.zip
	bash scripts/package.sh $(or $(ARCH),all)

fuzz: ## Fuzz the envelope parser, SQS event handling and the cron evaluator (nightly; FUZZ_SECONDS=300 per target); the corpus in fuzz/corpus grows and is kept
	bash scripts/fuzz.sh $(or $(FUZZ_SECONDS),300)

bench-event-source: stack-up ## Local event source throughput (noop tasks) vs LocalStack's raw receive+delete rate: MESSAGES=2000
	$(CARGO) build --profile profiling --workspace --bins
	./target/profiling/dualcaster migrate
	./target/profiling/dualcaster bench-event-source --messages $(or $(MESSAGES),2000)

bench-load: stack-up ## 10,000 messages of a realistic mix through the local event source: throughput, latency, retries, lost = 0, RSS and sockets over the run (MESSAGES, RATE)
	$(CARGO) build --profile profiling --workspace --bins
	./target/profiling/dualcaster migrate
	./target/profiling/dualcaster bench-load --messages $(or $(MESSAGES),10000) --rate $(or $(RATE),200)

bench-runtime: ## Function start-up (median, p95) vs a hello-world lambda_runtime function, zip sizes, runtime work per message (builds the x86_64 zips)
	WITH_FLOOR=1 bash scripts/package.sh x86_64
	$(CARGO) build --profile profiling --bin dualcaster
	./target/profiling/dualcaster bench-runtime --starts $(or $(STARTS),50) --batches $(or $(BATCHES),2000)

bench-ingest: stack-up ## Ingestion rate vs raw COPY and peak RSS at two file sizes (optimised build): CARDS=20000,100000
	$(CARGO) build --profile profiling --workspace --bins
	./target/profiling/dualcaster provision >/dev/null
	./target/profiling/dualcaster bench-ingest --cards $(or $(CARDS),20000$(comma)100000)

bench-analytics: stack-up ## Metrics + signals, full and incremental, vs one seq scan: real v4 history and PRINTINGS=100000 x DAYS=365 generated, RUNS=1 each (optimised build)
	$(CARGO) build --profile profiling --workspace --bins
	./target/profiling/dualcaster provision >/dev/null
	./target/profiling/dualcaster bench-analytics --printings $(or $(PRINTINGS),100000) --days $(or $(DAYS),365) --runs $(or $(RUNS),1)

status: provision ## Queues, DLQs, runs by task and outcome, failures by class, next fires, held leases: make status [WINDOW=15m] [WATCH=5]
	$(CLI) status --window $(or $(WINDOW),1h) $(if $(WATCH),--watch $(WATCH))

chain: provision ## The runs of one chain in order, with their outcomes: make chain ID=<chain id from a run report>
	$(CLI) ops '{"action":"chain","id":"$(ID)"}'

dlq-report: provision ## Dead letters per queue: depth, counts by task and error class, the latest ones
	$(CLI) ops '{"action":"dlq_stats","peek":$(or $(PEEK),5)}'

redrive: provision ## Replay a DLQ (dry run unless DRY_RUN=false): make redrive QUEUE=default [TASK=ping] [CLASS=database_unavailable] [AFTER=2026-11-26T00:00:00Z]
	@test -n "$(QUEUE)" || { echo "usage: make redrive QUEUE=<ingestion|analytics|default> [TASK=..] [CLASS=..] [DRY_RUN=false]"; exit 2; }
	$(CLI) ops '{"action":"redrive","queue":"$(QUEUE)","dry_run":$(or $(DRY_RUN),true)$(if $(TASK),$(comma)"task":"$(TASK)")$(if $(CLASS),$(comma)"error_class":"$(CLASS)")$(if $(AFTER),$(comma)"failed_after":"$(AFTER)")}'

purge-dlq: provision ## Empty a DLQ: make purge-dlq QUEUE=default CONFIRM='purge default-dlq'
	$(CLI) ops '{"action":"purge","queue":"$(QUEUE)","confirm":"$(CONFIRM)"}'
