# The README's two set-up commands: `make demo` and `make test`. Each installs what it needs
# (uv included) on a fresh machine; nothing is downloaded at run time beyond the package registries.
SHELL := /bin/bash
PYTHON ?= python3
# uv on PATH, else the uv module of $(PYTHON) (installed by the `uv` target when missing).
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
# pillow-simd is built from source; AVX2 makes its resize about 2x faster where the CPU has it.
SIMD_CC := $(shell grep -q avx2 /proc/cpuinfo 2>/dev/null && echo "cc -mavx2" || echo cc)
VENV := .venv
STAMP := $(VENV)/.synced
RUN := $(UV) run --frozen --no-sync

.PHONY: uv setup demo test test-fast bench bench-deps bench-peers lint slurm-deps storage-deps clean gpu-check gpu-wheels

uv:
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 \
	  || $(PYTHON) -m pip install --quiet uv

$(STAMP): pyproject.toml uv.lock pipeline/data/_jpeg.c | uv
	CC="$(SIMD_CC)" $(UV) sync --frozen --extra dev
	@touch $@

setup: $(STAMP)

demo: setup
	$(RUN) python -m tools.demo

# Slurm tests need slurm-wlm and munge; install them when we can (root + apt), else they skip.
# CI sets REQUIRE_SLURM=1: there a missing Slurm is a failure, never a silent skip.
REQUIRE_SLURM ?= 0
slurm-deps:
	@if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null) \
	      || echo "slurm-wlm could not be installed: the slurm tests will skip"; \
	  else echo "slurm-wlm is not installed and apt-get is not usable: the slurm tests will skip"; fi; \
	fi
	@if [ "$(REQUIRE_SLURM)" = 1 ] && ! command -v slurmctld >/dev/null 2>&1; then \
	  echo "REQUIRE_SLURM=1 but slurm-wlm is not installed: the slurm tests would skip" >&2; exit 1; fi

# The storage tests serve shards with nginx (Debian); moto's S3 server comes with the dev extra.
# Installed when we can (root + apt), else those tests skip; under CI (CI or REQUIRE_SLURM=1)
# a missing nginx fails here and in the tests' fixture.
storage-deps:
	@if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light \
	      || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx; } >/dev/null) \
	      || echo "nginx could not be installed: the storage tests over HTTP will skip"; \
	  else echo "nginx is not installed and apt-get is not usable: the HTTP storage tests will skip"; fi; \
	fi
	@if { [ -n "$$CI" ] || [ "$(REQUIRE_SLURM)" = 1 ]; } && ! command -v nginx >/dev/null 2>&1 \
	  && [ ! -x /usr/sbin/nginx ]; then \
	  echo "CI needs nginx for the storage tests but it is not installed" >&2; exit 1; fi


# The suite runs on TEST_WORKERS pytest-xdist workers; `--dist loadgroup` keeps the tests that share
# a costly fixture (the Slurm cluster, a reference run) on one worker (tests/conftest.py).
# 2 = CI's cores: a subset of the slow tests took 506 s serial, 207 s on 2 workers and 293 s on 3
# (this shared 2-core machine, 2026-12-06). TEST_WORKERS=0 runs everything in one process, in order.
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadgroup)

test: setup slurm-deps storage-deps
	$(RUN) pytest $(XDIST) $(PYTEST_ARGS)

test-fast: setup
	$(RUN) pytest $(XDIST) -m "not slow and not slurm" $(PYTEST_ARGS)

# The resize benchmark compares against the real ImageMagick (`convert`), installed when we can.
bench-deps:
	@if ! convert -version 2>/dev/null | grep -q ImageMagick; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq imagemagick >/dev/null) \
	      || echo "imagemagick could not be installed: the resize bench will say so"; \
	  else echo "the real ImageMagick is not installed: the resize bench will say so"; fi; \
	fi

bench: setup bench-deps
	$(RUN) python -m tools.bench_resize
	$(RUN) python -m tools.bench_loader
	$(RUN) python -m tools.bench_train
	$(RUN) python -m tools.bench_comm

# FFCV 1.0.2, the loader the field compares against, in a venv of its own (the main one never
# sees it): Debian's OpenCV and libturbojpeg, then its sdist built against them without build
# isolation (torch comes from uv's cache of the main venv's). A machine where it cannot build
# says so in one line; the rest runs. Then FFCV's loader on tools.bench_loader's 2,048 JPEGs.
FFCV_VENV := .venv-ffcv
bench-peers: setup
	@$(MAKE) --no-print-directory $(FFCV_VENV)/.built >$(FFCV_VENV).log 2>&1 \
	  || echo "FFCV 1.0.2 could not be built here (see $(FFCV_VENV).log): its benchmark is skipped"
	@if [ -f $(FFCV_VENV)/.built ]; then \
	  root=$$($(RUN) python -c "import tools.bench_loader as b; \
	    print(b.build_dataset(b.DEFAULT_PHOTOS, b.DEFAULT_CACHE, 2048))" | tail -1) && \
	  $(FFCV_VENV)/bin/python -m tools.bench_ffcv --folders "$$root/folders/train"; fi

$(FFCV_VENV)/.built:
	pkg-config --exists opencv4 libturbojpeg 2>/dev/null || { [ "$$(id -u)" = 0 ] && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    libopencv-dev libturbojpeg0-dev pkg-config; }
	pkg-config --exists opencv4 libturbojpeg
	rm -rf $(FFCV_VENV) && $(UV) venv -q --python 3.11 $(FFCV_VENV)
	$(UV) pip install --no-config --python $(FFCV_VENV)/bin/python \
	  setuptools wheel numpy pillow "torch==2.13.*"
	$(UV) pip install --no-config --python $(FFCV_VENV)/bin/python --no-build-isolation "ffcv==1.0.2"
	$(FFCV_VENV)/bin/python -c "import ffcv.loader, ffcv.fields, ffcv.transforms"
	touch $@

# The one-shot GPU check runs on the node's own Python and torch: no uv, no network, the
# repository on PYTHONPATH. What the node lacks (DALI, webdataset, wandb) comes from GPU_WHEELS,
# a folder `make gpu-wheels` fills on a machine with network. Results: GPU_CHECK_OUT/.
# Here, without a GPU: make gpu-check PYTHON=.venv/bin/python GPU_CHECK_ARGS=--quick
GPU_CHECK_OUT ?= gpu-check-results
GPU_WHEELS ?= gpu-wheels
GPU_CHECK_ARGS ?=
PYTHON_VERSION ?= 3.12
SPLIT_MB ?= 60
GPU_WHEELS_ARGS ?=
gpu-check:
	PYTHONPATH=.$${PYTHONPATH:+:$$PYTHONPATH} $(PYTHON) -m tools.gpu_check \
	  --out $(GPU_CHECK_OUT) --wheels $(GPU_WHEELS) $(GPU_CHECK_ARGS)

gpu-wheels:
	PYTHONPATH=.$${PYTHONPATH:+:$$PYTHONPATH} $(PYTHON) -m tools.gpu_wheels \
	  --dest $(GPU_WHEELS) --python-version $(PYTHON_VERSION) --split-mb $(SPLIT_MB) $(GPU_WHEELS_ARGS)

lint: setup
	$(RUN) ruff format --check .
	$(RUN) ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
