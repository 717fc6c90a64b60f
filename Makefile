# Two set-up commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test lint clean

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || { command -v $(PYTHON) >/dev/null 2>&1 || PYTHON=python3; $(PYTHON) -m venv $(VENV) 2>/dev/null || python3 -m venv $(VENV); }
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/vitreduce demo --jobs 2

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

# The suite on this machine's own CPU kernels, then the tests that compare numbers with stored ones under
# every lower capability torch can dispatch to (tests/cpu_capabilities.py; docs/reproducibility.md).
test: lint
	$(PY) -m pytest -q -n 2 --dist loadgroup
	@for cap in $$($(PY) tests/cpu_capabilities.py); do \
		echo "tests marked stored_numbers, under ATEN_CPU_CAPABILITY=$$cap:"; \
		ATEN_CPU_CAPABILITY=$$cap $(PY) -m pytest -q -n 2 --dist loadgroup -m stored_numbers || exit 1; \
	done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
