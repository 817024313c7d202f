# bng: the commands a developer and CI use. `make help` lists them.
SHELL := /bin/bash
VENV  := .venv
BIN   := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: help setup test unit lint crds dashboards lab lab-down cluster cluster-down clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

setup:  ## install everything (apt packages, kernel headers link, .venv, kube-apiserver/etcd)
	@hack/setup.sh

test: setup lint  ## the whole suite: unit, bpf (root), k8s (real apiserver), e2e, cluster (kubelet)
	BNG_REQUIRE_TIERS=unit,bpf,k8s,e2e,cluster PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest $(PYTEST_ARGS)

unit:  ## only the unit tier (no root, no network)
	$(BIN)/pytest -m unit $(PYTEST_ARGS)

lint:  ## ruff + mypy, and the generated CRDs and dashboards must match their sources
	$(BIN)/ruff check bng_operator tests bench
	$(BIN)/mypy bng_operator
	$(BIN)/bng crds --check crds
	$(BIN)/bng dashboards --check charts/bng/dashboards

crds:  ## regenerate crds/ from bng_operator/api
	$(BIN)/bng crds --write crds

dashboards:  ## regenerate charts/bng/dashboards/ from bng_operator/dashboards.py
	$(BIN)/bng dashboards --write charts/bng/dashboards

SUBSCRIBERS ?= 20
lab: setup  ## run a small ISP site here: bng node, OLT, $(SUBSCRIBERS) dhclient subscribers, live table
	$(BIN)/bng lab --subscribers $(SUBSCRIBERS)

lab-down:  ## remove what a crashed lab or test run left behind
	$(BIN)/bng lab --down

cluster: setup  ## bng installed by helm on a one-node cluster here (kubelet, containerd), samples applied
	$(BIN)/bng lab --kubernetes --subscribers 5

cluster-down:  ## remove what a crashed `make cluster` or cluster test left behind
	$(BIN)/bng lab --kubernetes --down

clean:  ## remove the venv and caches (not the cached kube binaries in ~/.cache/bng)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
