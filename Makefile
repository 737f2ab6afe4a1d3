# minidiff — set-up, tests, demo, benchmarks.
# `make install` makes .venv (unless a virtual env is already active) and installs torch from
# TORCH_SPEC first, so a CPU machine keeps its CPU wheel; on a GPU machine say
#   make install TORCH_SPEC=torch
# TORCH_INDEX, when set, is the package index torch alone comes from: on a machine with internet and
# no GPU, PyTorch's CPU wheels instead of the multi-GB CUDA build:
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
ifdef VIRTUAL_ENV
PY := python
else
PY := .venv/bin/python
endif
STAMP := $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV)/.minidiff-installed,.venv/.minidiff-installed)

.PHONY: install test test-slow demo bench lint clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
ifndef VIRTUAL_ENV
	test -x .venv/bin/python || python3 -m venv .venv
endif
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)") "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: install
	$(PY) -m pytest -q -n 2 --timeout=600

test-slow: install
	$(PY) -m pytest -q -m slow

demo: install
	$(PY) examples/sprites_ddpm.py --preset quick

bench: install
	$(PY) benchmarks/run_all.py --quick

lint: install
	$(PY) -m ruff check minidiff examples benchmarks tests

clean:
	rm -rf .venv build *.egg-info outputs .pytest_cache
