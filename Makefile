# Two set-up commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SCRIPTS := skills/bitrix24-agent/scripts

.PHONY: fleet install test lint format demo bench sandbox references runtimes peers units clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the project's declared dependencies change.
$(STAMP): pyproject.toml $(wildcard $(SCRIPTS)/requirements*.txt) | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The Codex CLI whose own skill loader tests/test_runtimes.py runs on the skill folder; npm
# installs it with its native binary in a few seconds. Without npm the test skips (.ci/run
# installs node and makes it fail instead).
CODEX_VERSION := 0.171.0
CODEX := $(VENV)/node/node_modules/.bin/codex

$(CODEX): | $(PY)
	@if command -v npm >/dev/null 2>&1; then \
	  npm install --silent --no-audit --no-fund --prefix $(VENV)/node @openai/codex@$(CODEX_VERSION); \
	else echo "make: npm not found; the Codex loader test will skip" >&2; fi

# The vendor's JS SDK, unmodified, that tests/test_peer_b24jssdk.py runs against the sandbox
# (v2 and REST 3.0 calls, lists and batches); same npm prefix, a few seconds.
JSSDK_VERSION := 2.2.0
JSSDK := $(VENV)/node/node_modules/@bitrix24/b24jssdk/package.json

$(JSSDK): | $(PY)
	@if command -v npm >/dev/null 2>&1; then \
	  npm install --silent --no-audit --no-fund --prefix $(VENV)/node @bitrix24/b24jssdk@$(JSSDK_VERSION); \
	else echo "make: npm not found; the JS SDK peer test will skip" >&2; fi

# Unmodified peer clients against the sandbox (also part of make test).
peers: $(STAMP) $(JSSDK)
	$(PY) -m pytest -q -p no:cacheprovider -s tests/test_peer_b24jssdk.py tests/test_peer_fast_bitrix24.py

runtimes: $(STAMP) $(CODEX)
	$(PY) -m pytest -q -p no:cacheprovider tests/test_runtimes.py

# Two workers: the suite is mostly waiting on subprocesses and sockets, and 2 cores is the target.
test: lint $(CODEX) $(JSSDK)
	$(PY) -m pytest -q -n 2 -p no:cacheprovider

# The fleet's heavy end-to-end runs (3 hosts, one redis-server): 24 processes on one bucket,
# 10,000 events through SIGKILLs, Redis killed mid-run (`make test` runs only the light ones).
fleet: $(STAMP)
	FLEET_HEAVY=1 $(PY) -m pytest -q -s -p no:cacheprovider tests/test_fleet.py

demo: $(STAMP)
	$(PY) -m b24agent.cli.demo

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/run_all.py --results bench/RESULTS.md

# Regenerate the catalog's reference pages after a change to the catalog or tools/.
references: $(STAMP)
	$(PY) -m tools.build_references

# README's systemd units through `systemd-analyze verify` (needs systemd; not in make test).
units: $(STAMP)
	$(PY) -m tools.check_units

sandbox: $(STAMP)
	$(PY) $(SCRIPTS)/sandbox_portal.py --seed-demo

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
