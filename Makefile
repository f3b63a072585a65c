# The two commands of the README. Both set everything up from a fresh clone:
# a virtual environment in .venv, torch (CPU build, unless TORCH_SPEC says otherwise), the build.
# `make test PY=python3` uses a Python that already has torch and the build tools (a GPU machine's
# CUDA torch, no registry needed): no virtual environment, nothing downloaded.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
ifeq ($(origin PY),command line)
STAMP :=
else
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gencore-deps
endif

.PHONY: demo test bench check build setup clean

ifneq ($(STAMP),)
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install setuptools wheel
	$(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install numpy packaging scikit-learn tqdm pillow pybind11 ninja pytest pytest-benchmark sacrebleu "transformers>=5.24"
	touch $(STAMP)
endif

setup: $(STAMP)

# Run every time: setup.py keeps its objects in build/temp, so ninja recompiles only what changed.
build: setup
	$(PY) -m pip install --no-build-isolation --no-deps -e .

demo: build
	$(PY) -m gencore demo

test: build
	GENCORE_REQUIRE_C=1 $(PY) -m pytest -q tests

bench: build
	$(PY) -m gencore bench

check: build
	$(PY) -m gencore check

clean:
	rm -rf build *.egg-info gencore/_C*.so
