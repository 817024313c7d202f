# bng: the commands a developer and CI use. `make help` lists them.
SHELL := /bin/bash
VENV  := .venv
BIN   := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: help setup test unit lint crds lab lab-down clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

setup:  ## install everything (apt packages, kernel headers link, .venv, kube-apiserver/etcd)
	@hack/setup.sh

test: setup lint  ## the whole suite: unit, bpf (root), k8s (real apiserver), e2e
	BNG_REQUIRE_TIERS=unit,bpf,k8s PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest $(PYTEST_ARGS)

unit:  ## only the unit tier (no root, no network)
	$(BIN)/pytest -m unit $(PYTEST_ARGS)

lint:  ## ruff + mypy, and the generated CRDs must match the models
	$(BIN)/ruff check bng_operator tests bench
	$(BIN)/mypy bng_operator
	$(BIN)/bng crds --check crds

crds:  ## regenerate crds/ from bng_operator/api
	$(BIN)/bng crds --write crds

lab:  ## run a small ISP site on this machine (arrives with the DHCPv4 server)
	@echo "make lab: not yet. The lab (a bng node and 20 subscribers in network namespaces," >&2
	@echo "real dhclient, a live subscriber table) arrives with the DHCPv4 server issue." >&2
	@echo "Until then: 'make test' runs everything that exists." >&2
	@exit 2

lab-down:  ## remove what a crashed lab left behind
	@$(BIN)/python -c 'from bng_operator.testing.netlab import remove_leftovers as r; print("removed:", r() or "nothing")'

clean:  ## remove the venv and caches (not the cached kube binaries in ~/.cache/bng)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
