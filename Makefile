# trt-refit-operator. The two commands a newcomer needs:
#   make demo    build what is missing, start a local control plane, roll a sample TRTModel end to end
#   make test    lint, type-check and run every test (unit, integration, e2e) on the local control plane
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)

.PHONY: help venv tools cluster-up cluster-down lint test test-unit crd demo demo-down bench clean

help:
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/' | expand -t 16

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@echo "installing Python dependencies into $(VENV) (torch is a large download the first time)"
	$(PY) -m pip install -q -e '.[worker,serve,dev]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP) ## Python virtualenv with the operator, worker, serving and dev dependencies

tools: ## build kube-apiserver & co., etcd, kwok, helm from source into the cache (once)
	bash hack/build-tools.sh

cluster-up: tools ## start a local control plane (.cluster/kubeconfig)
	$(PYTHON) hack/localcluster.py up --dir .cluster

cluster-down: ## stop it, leaving no process behind
	$(PYTHON) hack/localcluster.py down --dir .cluster

lint: venv ## ruff, mypy --strict (the package, hack/, tests/, bench/), import-linter
	$(VENV)/bin/ruff check operator hack tests bench
	$(VENV)/bin/ruff format --check operator hack tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy tests bench
	$(VENV)/bin/lint-imports

crd: venv ## regenerate crds/ from the pydantic models
	$(VENV)/bin/trtrefit crd --output crds/trtmodel.yaml

test-unit: venv ## fast tests only (no control plane)
	$(VENV)/bin/pytest -m "not integration and not e2e and not gpu" -q

test: venv tools lint ## everything CI runs
	$(VENV)/bin/pytest -q

bench: venv tools ## control-plane benchmark (CPU); see bench/README.md for the GPU one
	$(PY) bench/controlplane.py

demo: venv tools ## local control plane + chart + operator + S3 + a TRTModel rolled over end to end (CPU)
	$(PY) hack/demo.py

demo-down: ## stop everything `make demo` started
	$(PY) hack/demo.py down

clean: ## stop what earlier runs left running (by recorded pid + start time), remove their state
	@# localcluster.py down needs no venv and no built tools: it goes by the records alone.
	$(PYTHON) hack/localcluster.py down --dir .cluster
	$(PYTHON) hack/localcluster.py down --dir .demo
	$(PYTHON) hack/localcluster.py down --dir .demo/cluster
	$(PYTHON) hack/localcluster.py down --strays
	rm -rf .cluster .demo
