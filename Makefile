# commlib — the two commands of the README:
#   make demo   set everything up, then run a short 4-worker torchrun training
#   make test   set everything up, then run the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.installed

.PHONY: demo test setup bench lint clean cuda-check asan docs bench-netem

setup: $(STAMP)

# torch first, pinned (a CPU build lies on disk); the rest afterwards so pip never resolves another torch.
$(STAMP): setup.py pyproject.toml requirements-dev.txt constraints.txt $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cuda/*.cu)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -r requirements-dev.txt -c constraints.txt
	$(PIP) install --no-build-isolation -e .
	touch $@

demo: $(STAMP)
	$(PY) -m commlib.cli demo

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) benchmarks/hooks_cpu.py

# Real DDP training across network namespaces joined by tc-shaped veths (root; without root: unshaped loopback).
# Writes benchmarks/results/netem.json and netem.png; NETEM_ARGS=--quick for a smoke run.
bench-netem: $(STAMP)
	$(PY) benchmarks/netem/netem_driver.py $(NETEM_ARGS)

# Compile every CUDA source to an object for sm_90 against torch's headers (no GPU needed). A CPU-only torch
# lacks one generated header, c10/cuda/impl/cuda_cmake_macros.h; a stand-in is written to build/cuda-check/shim.
CUDA_CHECK := build/cuda-check
cuda-check: $(STAMP)
	@command -v nvcc >/dev/null || { echo "cuda-check: nvcc not found, nothing to check"; exit 0; }; \
	mkdir -p $(CUDA_CHECK)/shim/c10/cuda/impl && \
	printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > $(CUDA_CHECK)/shim/c10/cuda/impl/cuda_cmake_macros.h && \
	includes="$$($(PY) -c 'import sysconfig, torch.utils.cpp_extension as c; print(" ".join("-I" + p for p in c.include_paths() + [sysconfig.get_paths()["include"]]))')" && \
	for f in csrc/cuda/*.cu; do \
	  echo "nvcc sm_90: $$f"; \
	  nvcc -std=c++20 -arch=sm_90 -O3 -DWITH_CUDA --expt-relaxed-constexpr -Xcompiler -fPIC -w \
	    $$includes -I$(CUDA_CHECK)/shim -c $$f -o $(CUDA_CHECK)/$$(basename $$f).o || exit 1; \
	done; echo "cuda-check: every .cu compiles for sm_90"

# The kernel tests once more against an AddressSanitizer build of commlib._C (built into build/asan, not the venv).
# Python itself is not instrumented, so libasan is preloaded, and libstdc++ with it (ASan's __cxa_throw
# interceptor must find the real one at start-up, or the first C++ exception aborts).
ASAN_DIR := build/asan
asan: $(STAMP)
	rm -rf $(ASAN_DIR) && mkdir -p $(ASAN_DIR) && cp -r commlib $(ASAN_DIR)/commlib && rm -f $(ASAN_DIR)/commlib/_C*.so
	ASAN=1 $(PY) setup.py -q build_ext --build-lib $(ASAN_DIR) --build-temp $(ASAN_DIR)/tmp
	cd $(ASAN_DIR) && LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libstdc++.so)" \
	  ASAN_OPTIONS=detect_leaks=0:alloc_dealloc_mismatch=0:detect_odr_violation=0 \
	  $(CURDIR)/$(PY) -c 'import commlib.ops as o; assert o.backend() == "cpp", o.backend(); print("asan build loaded")' && \
	  LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libstdc++.so)" \
	  ASAN_OPTIONS=detect_leaks=0:alloc_dealloc_mismatch=0:detect_odr_violation=0 \
	  $(CURDIR)/$(PY) -m pytest -q -p no:cacheprovider $(CURDIR)/tests/ops

# The documentation site (mkdocs.yml): its packages into .venv, then a strict build into site/. The API pages are read
# from the sources (griffe), so neither torch nor the extension is needed and `make docs` never rebuilds commlib.
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): requirements-docs.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements-docs.txt -c constraints.txt
	touch $@

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -d site/

lint: $(STAMP)
	$(VENV)/bin/ruff check commlib tests benchmarks examples

clean:
	rm -rf $(VENV) build *.egg-info commlib/_C*.so
