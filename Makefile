# Two commands on a fresh machine with Python 3.11+: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test bench lint instance system-deps clean

$(STAMP): setup.py constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11 or newer is needed" >&2; exit 1; }
	@bash ci/install-system-deps ci/apt-base.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt --config-settings editable_mode=compat -e '.[recipe,test]'
	touch $@

# Debian packages the tests and benchmarks need (browser, Prometheus, logrotate...).
system-deps:
	@bash ci/install-system-deps ci/apt-packages.txt

run: $(STAMP)
	@bash ci/run-local

# The software release and one partition on this machine (collector by cron, slapmonitor).
instance: $(STAMP) system-deps
	@bash ci/run-instance

test: $(STAMP) system-deps
	$(PY) -m ruff check slapos_collect_recipe tests benchmarks
	$(PY) -m pytest -ra tests

bench: $(STAMP) system-deps
	@bash ci/install-system-deps ci/apt-bench-packages.txt
	$(PY) benchmarks/run.py

lint: $(STAMP)
	$(PY) -m ruff check slapos_collect_recipe tests benchmarks

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache
