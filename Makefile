# Dynoserve: `make run` and `make test` are all a newcomer needs; each sets up what it lacks.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BASE ?= $(shell command -v python3.11 || command -v python3)
VENV        := .venv
GW_VENV     := .venv-gateway
PY          := $(VENV)/bin/python
GW_PY       := $(GW_VENV)/bin/python
PIP_FLAGS   := --disable-pip-version-check --quiet
APT_PACKAGES := chromium siege nginx
SUDO        := $(if $(filter 0,$(shell id -u)),,sudo)

EXPORT_DIR  ?= exports
MODEL_BASE_PATH ?= var/models
PYTEST_ARGS ?=

export PYTHONPATH := $(CURDIR)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: help setup run test test-kernels heroku-check lint audit export publish labels prune bench bench-quick clean demo-model bench-model apt-deps fmt

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[1m%-12s\033[0m %s\n", $$1, $$2}'

setup: $(VENV)/.stamp $(GW_VENV)/.stamp gateway/_proto/.stamp ## Create both virtualenvs with pinned packages and generate code (idempotent)

$(VENV)/.stamp: requirements/dev.txt requirements/dev-lock.txt requirements/model.txt requirements/model-nodeps.txt requirements/gateway.txt
	$(PYTHON_BASE) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip==26.3
	$(PY) -m pip install $(PIP_FLAGS) -r requirements/dev.txt -c requirements/dev-lock.txt
	$(PY) -m pip install $(PIP_FLAGS) --no-deps -r requirements/model-nodeps.txt
	@# the --no-deps packages name `tensorflow`; tensorflow-cpu provides it
	$(PY) -m pip check | grep -v "requires tensorflow, which is not installed" | (! grep .)
	touch $@

# The gateway's own environment: the dyno's Python processes, provably without TensorFlow.
$(GW_VENV)/.stamp: requirements/gateway.txt
	$(PYTHON_BASE) -m venv $(GW_VENV)
	$(GW_PY) -m pip install $(PIP_FLAGS) --upgrade pip==26.3
	$(GW_PY) -m pip install $(PIP_FLAGS) -r requirements/gateway.txt
	touch $@

gateway/_proto/.stamp: $(VENV)/.stamp $(wildcard gateway/protos/*/*/*/*.proto gateway/protos/*/*/*.proto) gateway/protogen.py
	$(PY) -m gateway.protogen
	touch $@

apt-deps: ## Install the Debian packages tests and benchmarks use (chromium, siege, nginx)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

heroku-check: setup ## Without Docker: Dockerfile, supervisord.conf, app.json, heroku.yml and the tests agree; hadolint
	$(PY) -m pytest tests/e2e/test_packaging.py -q
	$(VENV)/bin/hadolint Dockerfile

demo-model: $(EXPORT_DIR)/shapes/2/saved_model.pb ## Train the demo classifier on generated images and export two versions

# Built once (about a minute); `make demo-model ARGS=--force` after changing export/demo_config.py.
$(EXPORT_DIR)/shapes/2/saved_model.pb: $(if $(ARGS),FORCE) | $(VENV)/.stamp
	$(PY) -m export.demo --export-dir $(EXPORT_DIR) $(ARGS)

bench-model: $(VENV)/.stamp ## Export the benchmark model (MobileNet v1 224, 40 classes, random weights)
	$(PY) -m export.benchmodel --export-dir $(EXPORT_DIR)

# ARGS (e.g. --force) makes the demo model rebuild even when its files exist.
FORCE:

run: setup demo-model ## Serve the demo model on http://127.0.0.1:8080 (PORT; loopback only unless DYNOSERVE_BIND_HOST): sync, model server, gateway
	mkdir -p var/run $(MODEL_BASE_PATH)
	PORT=$${PORT:-8080} \
	DYNOSERVE_BIND_HOST=$${DYNOSERVE_BIND_HOST:-127.0.0.1} \
	DYNOSERVE_RUNTIME_PYTHON=$(CURDIR)/$(GW_PY) \
	DYNOSERVE_MODEL_PYTHON=$(CURDIR)/$(PY) \
	DYNOSERVE_MODEL_BASE_PATH=$${DYNOSERVE_MODEL_BASE_PATH:-$(MODEL_BASE_PATH)} \
	DYNOSERVE_RUN_DIR=$(CURDIR)/var/run \
	DYNOSERVE_MODEL_SERVER_GRPC_PORT=$${DYNOSERVE_MODEL_SERVER_GRPC_PORT:-8500} \
	DYNOSERVE_MODEL_SERVER_REST_PORT=$${DYNOSERVE_MODEL_SERVER_REST_PORT:-8501} \
	$(GW_PY) -m dyno

test: setup apt-deps demo-model lint ## Lint, then run every test (slow end-to-end ones included)
	$(PY) -m pytest $(PYTEST_ARGS)

# TensorFlow picks its kernels by CPU (oneDNN on with AVX-512 VNNI/BF16, off elsewhere), and the
# two families fail differently on bad input. CI runs `make test` with one forced and this with the other.
TF_TESTS := tests/serving tests/export tests/e2e tests/dyno
test-kernels: setup apt-deps demo-model ## Re-run the TensorFlow-touching tests with one kernel family: make test-kernels ONEDNN=0 (or 1)
	TF_ENABLE_ONEDNN_OPTS=$(or $(ONEDNN),0) $(PY) -m pytest $(TF_TESTS) $(PYTEST_ARGS)

lint: setup ## ruff, mypy, the import-cycle and layer checks, OpenAPI = the rules, hadolint and the dependency audit
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m devtools.importcycles
	@# the layers (.importlinter, docs/layers.md): base <- processes <- tools; nothing imports tests
	$(VENV)/bin/lint-imports --no-cache
	@# the OpenAPI document states the rules the server enforces (modelrepo/api.py)
	$(PY) -m pytest -q -p no:cacheprovider tests/gateway/test_openapi_rules.py
	$(VENV)/bin/hadolint Dockerfile
	@$(AUDIT)

# Every pinned file, through pip-audit and PyPI's vulnerability data (devtools/audit.py says
# what that covers here). A vulnerable pin always fails; PyPI out of reach (exit 2) fails in CI
# only, so an offline `make test` still runs.
AUDIT = $(PY) -m devtools.audit $(sort $(wildcard requirements/*.txt)) || { rc=$$?; \
	if [ $$rc -eq 2 ] && [ -z "$$CI" ]; then echo "audit: skipped, PyPI out of reach (CI fails here)"; else exit $$rc; fi; }

audit: setup ## Known vulnerabilities in every pinned requirements file (pip-audit, PyPI's data)
	@$(AUDIT)

fmt: setup ## Format the code with ruff
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

export: setup ## Export a checkpoint: make export CHECKPOINT=path NAME=model [VERSION=n] [LABELS=file] [ARGS="..."]
	@test -n "$(CHECKPOINT)" -a -n "$(NAME)" || { echo "usage: make export CHECKPOINT=<path> NAME=<model> [VERSION=<n>] [LABELS=<labels.txt>] [ARGS='...']"; exit 2; }
	$(PY) -m export "$(CHECKPOINT)" --name "$(NAME)" --export-dir "$(EXPORT_DIR)" \
	  $(if $(VERSION),--version "$(VERSION)") $(if $(LABELS),--labels "$(LABELS)") $(ARGS)

publish: setup ## Upload exports and the model's manifest to S3: make publish NAME=model [VERSION=n | ALL=1]
	@test -n "$(NAME)" || { echo "usage: make publish NAME=<model> [VERSION=<n> | ALL=1] [ARGS=--replace-manifest]"; exit 2; }
	$(GW_PY) -m sync.publish --name "$(NAME)" --export-dir "$(EXPORT_DIR)" $(if $(VERSION),--version "$(VERSION)") $(if $(ALL),--all) $(ARGS)

labels: setup ## Set version labels and weights in the bucket (or exports/): make labels NAME=model LABELS="stable=1 canary=2" [POLICY=all] [WEIGHTS="1=90 2=10" [WEIGHTS_LABEL=stable]]
	@test -n "$(NAME)" || { echo 'usage: make labels NAME=<model> [LABELS="stable=1 canary=2"] [POLICY=all|latest:N|specific:1,2] [WEIGHTS="1=90 2=10"|none [WEIGHTS_LABEL=<label>]]'; exit 2; }
	DYNOSERVE_EXPORT_DIR=$${DYNOSERVE_EXPORT_DIR:-$(EXPORT_DIR)} \
	$(GW_PY) -m sync.labels --name "$(NAME)" $(LABELS) $(if $(POLICY),--policy "$(POLICY)") \
	  $(if $(WEIGHTS),--weights "$(WEIGHTS)") $(if $(WEIGHTS_LABEL),--weights-label "$(WEIGHTS_LABEL)")

# `make run` keeps serving a model deleted from the source (a wrong prefix must not wipe the
# dyno); stop `make run`, then prune. DYNOSERVE_SYNC_PRUNE=true make run prunes as it goes.
prune: setup ## Drop models gone from the source from models.config and disk (make run stopped)
	DYNOSERVE_EXPORT_DIR=$${DYNOSERVE_EXPORT_DIR:-$(EXPORT_DIR)} \
	DYNOSERVE_MODEL_BASE_PATH=$${DYNOSERVE_MODEL_BASE_PATH:-$(MODEL_BASE_PATH)} \
	DYNOSERVE_MODEL_SERVER_REST_URL=$${DYNOSERVE_MODEL_SERVER_REST_URL:-http://127.0.0.1:$${DYNOSERVE_MODEL_SERVER_REST_PORT:-8501}} \
	$(GW_PY) -m sync --prune

# siege at 1-100 clients against Dynoserve, the 2019-style baseline and the model alone (bench/),
# then Dynoserve with image hosts 0-500 ms away, a slow-URL flood and 6 MB uploads; about
# 8 minutes with 10 s steps; ARGS=--original runs 60 s steps like the original (~20 min more);
# ARGS=--only=internet,flood,uploads runs only those parts.
bench: setup apt-deps ## The original experiment side by side, then images from the internet: table and plot in bench/results [ARGS=--original]
	$(PY) -m bench $(ARGS)

bench-quick: setup apt-deps ## make bench in about three minutes (fewer client counts, 5 s steps)
	$(PY) -m bench --quick $(ARGS)

# Exports are your models: clean leaves $(EXPORT_DIR) alone (delete a version by hand).
clean: ## Remove virtualenvs, generated code, synced models and caches (not exports/)
	rm -rf $(VENV) $(GW_VENV) gateway/_proto var .pytest_cache .mypy_cache .ruff_cache

# The dyno's image (deploy/image.py). A container engine: docker when its daemon answers, else
# podman with runc; mmdebstrap makes the Debian 12 base where no registry is reachable.
.PHONY: image image-deps image-run
IMAGE_APT_PACKAGES := podman runc mmdebstrap
test: image-deps

image-deps: ## Install podman, runc and mmdebstrap (Debian packages, as root) unless present
	@missing=""; for p in $(IMAGE_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

image: image-deps ## Build the image as Heroku does (docker, else podman); no registry: local base and model server [MODEL_SERVER=stock|local]
	$(PYTHON_BASE) -m deploy.image build $(if $(MODEL_SERVER),--model-server $(MODEL_SERVER)) $(ARGS)

# Models from the bucket when BUCKETEER_BUCKET_NAME is set (DYNOSERVE_S3_ENDPOINT_URL for moto),
# else the demo model's export folder, mounted read-only.
image-run: image $(if $(BUCKETEER_BUCKET_NAME),,demo-model) ## Run the image as a dyno: random $PORT, another uid, MEMORY=512m|1g, app.json's env
	$(PYTHON_BASE) -m deploy.image run --memory $(or $(MEMORY),512m) $(ARGS)
