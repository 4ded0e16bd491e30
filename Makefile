# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages the test suite uses: docker-compose validates the compose file,
# redis-server is preferred over the bundled Valkey binary when present.
APT_PACKAGES := docker-compose redis-server prometheus prometheus-alertmanager chromium chromium-driver

.PHONY: install demo test unit integration lint format bench bench-quix bench-profile bench-scale clean dashboards

install: $(STAMP)

$(STAMP): pyproject.toml
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		missing=""; \
		for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
		if [ -n "$$missing" ]; then \
			echo "installing Debian packages:$$missing"; \
			apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; \
		fi; \
	fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/retention up --demo

test: install
	$(BIN)/python -m pytest

unit: install
	$(BIN)/python -m pytest tests/unit

integration: install
	$(BIN)/python -m pytest tests/integration

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# grafana/dashboards/*.json from grafana/build.py, thresholds from prometheus/rules/
dashboards: install
	$(BIN)/python grafana/build.py

bench: install
	$(BIN)/python bench/throughput.py

# floor, pipeline and a Quix Streams peer, interleaved; the peer runs in an environment of
# its own (bench/.venv-quix, made on first use from PyPI)
bench-quix: install
	$(BIN)/python bench/throughput.py --variants floor-tuned,batchfloor-tuned,pipeline-tuned,quix --repeat 3

# where the worker's time per event goes, by stage
bench-profile: install
	$(BIN)/python bench/profile_stages.py

# workers, shards and a Redis Cluster, then synthetic stores of growing size (minutes)
bench-scale: install
	$(BIN)/python bench/scale_pipeline.py
	$(BIN)/python bench/scale_customers.py

# requirements.lock: the runtime dependencies and the build backend that the image installs,
# pinned with their hashes. uv runs from a throwaway venv, not from the project's own; pins
# already in the file are kept unless a dependency in pyproject.toml needs another.
LOCK_VENV ?= /tmp/retention-tracker-lock-venv
.PHONY: lock
lock:
	test -x $(LOCK_VENV)/bin/uv || { $(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install -q uv==0.13.10; }
	$(LOCK_VENV)/bin/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
		| $(LOCK_VENV)/bin/uv pip compile --quiet --no-config --generate-hashes \
			--python-version 3.11 --python-platform linux --custom-compile-command "make lock" \
			--output-file requirements.lock pyproject.toml -

clean:
	rm -rf $(VENV) .retention .pytest_cache .mypy_cache .ruff_cache *.egg-info
