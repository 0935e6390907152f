# commlib — the two commands of the README:
#   make demo   set everything up, then run a short 4-worker torchrun training
#   make test   set everything up, then run the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.installed

.PHONY: demo test setup bench lint clean

setup: $(STAMP)

# torch first, pinned (a CPU build lies on disk); the rest afterwards so pip never resolves another torch.
$(STAMP): setup.py pyproject.toml requirements-dev.txt $(wildcard csrc/*.cpp csrc/*.h csrc/cuda/*.cu)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -r requirements-dev.txt
	$(PIP) install --no-build-isolation -e .
	touch $@

demo: $(STAMP)
	$(VENV)/bin/torchrun --standalone --nproc-per-node=4 -m commlib.train.demo

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) benchmarks/hooks_cpu.py

lint: $(STAMP)
	$(VENV)/bin/ruff check commlib tests benchmarks examples

clean:
	rm -rf $(VENV) build *.egg-info commlib/_C*.so
