# Targets the README names: `make demo` (the main job) and `make test` (the whole suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test test-unit lint bench bench-smoke services-up services-down clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

# Python deps, espeak-ng and ffmpeg (Debian) and the Kafka jars (Maven Central); the producer
# examples' Go modules, npm packages and Maven jars, built (infra/producers.sh); Prometheus
# (Debian) and helm (built once from the Go module proxy) for the deploy/ checks.
setup: $(VENV)/.installed
	infra/packages.sh
	infra/kafka.sh fetch
	infra/producers.sh
	infra/platform.sh

demo: setup
	$(BIN)/voxline demo

# Starts the broker and store itself when they are not running (and stops them after).
test: setup
	$(BIN)/pytest

test-unit: $(VENV)/.installed
	$(BIN)/pytest tests/unit

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The benchmark table and plots in bench/results/ (about 16 minutes on 2 cores; README "Performance").
bench: setup
	$(BIN)/python -m bench.run

# Every scenario, tiny: keeps the harness from rotting (CI runs it).
bench-smoke: setup
	$(BIN)/python -m bench.run --smoke

services-up: setup
	infra/up.sh

services-down:
	infra/down.sh

clean: services-down
	rm -rf .infra $(VENV)
