# Two commands for a new user (see README): `make demo` and `make test`.
# Both create .venv and install the project into it first; `make test` also installs
# the mosquitto broker binary when missing (Debian/Ubuntu), since tests start their own.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.faultline-installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PACKAGES := agent encoders fault_library config models
TYPECHECK_ROOT := .typecheck

.PHONY: grafana-schema balena-tools node-red chromium prometheus demo test check lint typecheck bench bench-hot bench-soak bench-outbox mosquitto clean

# scripts/install.sh makes the venv and installs the project (llama.cpp's portable build
# flags and the default GGUF package live there); the balena image runs the same script.
$(STAMP): pyproject.toml scripts/install.sh
	PYTHON=$(PYTHON) scripts/install.sh $(VENV) -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/faultline demo $(DEMO_ARGS)

mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || { \
	  echo "mosquitto not found: installing the Debian package (tests start their own broker)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends mosquitto; }
	@command -v mosquitto_rr >/dev/null 2>&1 || { \
	  echo "mosquitto_rr not found: installing mosquitto-clients (a test asks questions with it)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends mosquitto-clients; }

# Headless Chromium and its driver (Debian's, not a browser build fetched at run time) for
# the dashboard's page test, tests/test_dashboard.py.
chromium:
	@command -v chromedriver >/dev/null 2>&1 || { \
	  echo "chromedriver not found: installing chromium and chromium-driver (the dashboard test)"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) apt-get install -y -qq --no-install-recommends chromium chromium-driver; }

# A real Prometheus (Debian's) that evaluates every query of the Grafana example against a
# running agent, tests/test_grafana_example.py.
prometheus:
	@command -v prometheus >/dev/null 2>&1 || { \
	  echo "prometheus not found: installing Debian's (the Grafana example's test)"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) apt-get install -y -qq --no-install-recommends prometheus; }

# balena's own compose library (the parse and Dockerfile.template resolution balena-cli
# runs before a build) for tests/test_balena.py; 7.4.1 is the last pure-JS release (8.x
# fetches a Go binary at install, which this network cannot). hadolint comes with .[dev].
BALENA_TOOLS := .tools
$(BALENA_TOOLS)/node_modules/@balena/compose/package.json:
	@command -v npm >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nodejs npm; }
	npm install --prefix $(BALENA_TOOLS) --no-audit --no-fund --silent @balena/compose@7.4.1

balena-tools: $(BALENA_TOOLS)/node_modules/@balena/compose/package.json

# A real Node-RED for the example flow's test (tests/test_node_red.py): 4.1 is the last
# line for Node 20 (5.x needs Node >= 22.9), with Dashboard 2.0 for the table and chart.
NODE_RED := $(BALENA_TOOLS)/node-red
$(NODE_RED)/node_modules/node-red/package.json:
	@command -v npm >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nodejs npm; }
	npm install --prefix $(NODE_RED) --no-audit --no-fund --silent \
	  node-red@4.1.8 @flowfuse/node-red-dashboard@1.31.0

node-red: $(NODE_RED)/node_modules/node-red/package.json

# Grafana's own dashboard schema (the TypeScript types @grafana/schema generates from its
# CUE) and the TypeScript compiler that checks docs/examples/grafana-dashboard.json against it.
GRAFANA_SCHEMA := $(BALENA_TOOLS)/grafana
$(GRAFANA_SCHEMA)/node_modules/@grafana/schema/package.json:
	@command -v npm >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nodejs npm; }
	npm install --prefix $(GRAFANA_SCHEMA) --no-audit --no-fund --silent \
	  typescript@5.9.3 @grafana/schema@13.2.3

grafana-schema: $(GRAFANA_SCHEMA)/node_modules/@grafana/schema/package.json

test: $(STAMP) mosquitto chromium prometheus balena-tools node-red grafana-schema check
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy cannot follow setuptools' editable finder for the faultline.* mapping, so it checks
# a tree of symlinks that mirrors the installed layout.
typecheck: $(STAMP)
	@mkdir -p $(TYPECHECK_ROOT)/faultline
	@for p in $(PACKAGES); do ln -sfn ../../$$p $(TYPECHECK_ROOT)/faultline/$$p; done
	MYPYPATH=$(TYPECHECK_ROOT) $(BIN)/mypy --config-file pyproject.toml -p faultline

check: lint typecheck

bench: bench-hot
	$(BIN)/python bench/encode.py
	$(BIN)/python bench/outbox.py

# The hot path against its transport ceiling (issue 12): both encodings, 1 and 2 processes,
# 16 and 256 windows outstanding, then half load. About 2 minutes per run on 2 cores.
bench-hot: $(STAMP) mosquitto
	for fmt in binary json; do for n in 1 2; do \
	  $(BIN)/python bench/e2e.py --format $$fmt --processes $$n $(BENCH_ARGS) || exit 1; \
	done; done

# Ten minutes at half load: the agent's resident memory must not grow.
bench-soak: $(STAMP) mosquitto
	$(BIN)/python bench/e2e.py --soak 600 $(BENCH_ARGS)

# The durable outbox's cost on its own (issue 10): on/off throughput, backlog replay, disk.
bench-outbox: $(STAMP) mosquitto
	$(BIN)/python bench/outbox.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(TYPECHECK_ROOT) $(BALENA_TOOLS) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
