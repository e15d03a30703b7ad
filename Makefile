# One-command entry points; each sets up .venv (torch, build tools) and builds ganplug._C first.
#   make train   the main job: ganplug train --arch dcgan --loss wasserstein on the bundled MNIST digits
#   make test    make check, then the test suite (ganplug and the example plugin in plugins/)
#   make check   ruff (lint and format), mypy over ganplug/, and the documentation site built with --strict
#   make bench   ganplug bench: fused ops vs eager PyTorch vs torch.compile, training steps vs the plain
#                loop, to bench-results/ (options: make bench BENCH_ARGS="--kernels --quick")
#   make bench-pytest   the pytest-benchmark suite in benchmarks/ (ratio tables in benchmarks/results/)
#   make docs    the documentation site (mkdocs.yml, docs/), built with --strict into site/
#   make gpu-check   on a GPU machine (CUDA toolkit + torch, no internet): tools/gpu_check.py, stage core
#                (<= 6 min): build for its GPU, CUDA tests, training runs, to gpu-check-results/core/;
#                make gpu-check STAGE=speed (<= 3 min): the benchmarks, to gpu-check-results/speed/;
#                GPU_CHECK_ARGS=--dry-run lists both with estimates (docs/kernels.md)
PYTHON ?= python3
STAGE ?= core
VENV := .venv
BIN := $(VENV)/bin
BUILT := $(VENV)/.ganplug-built
SOURCES := $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cuda/*.cu csrc/cuda/*.cuh) setup.py pyproject.toml

.PHONY: setup train check test bench bench-pytest gpu-check docs clean

setup: $(BUILT)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(BUILT): $(BIN)/python $(SOURCES)
	$(BIN)/python -m pip install -q "setuptools>=69" wheel ninja "torch>=2.5,<3" "torchvision>=0.20,<1" "numpy>=1.24,<3"
	MAX_JOBS=$${MAX_JOBS:-2} $(BIN)/python -m pip install -q --no-build-isolation -e ".[test,docs]"
	touch $@

train: setup
	$(BIN)/ganplug train --arch dcgan --loss wasserstein

check: docs
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: check
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/ganplug bench $(BENCH_ARGS)

bench-pytest: setup
	$(BIN)/python -m pytest -q benchmarks

gpu-check:
	@$(if $(filter command line,$(origin PYTHON)),$(PYTHON),$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))) -m tools.gpu_check --stage $(STAGE) $(GPU_CHECK_ARGS)

docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf build ganplug/_C*.so *.egg-info
