# Two commands on a fresh clone with only python3: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo run test test-fast lint typecheck bench bench-quick fuzz clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)  ## run the real worker on an embedded Redis and the shipped sample
	$(PY) -m worker demo --log-format console

run: $(STAMP)  ## run the daemon against STITCH_REDIS_URL
	$(VENV)/bin/lehnz-stitch run

test: $(STAMP)  ## the whole suite, long fault tests included
	$(PY) -m pytest -q

test-fast: $(STAMP)  ## everything but the long fault tests
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check worker resolver tests bench fuzz
	$(VENV)/bin/mypy

bench: $(STAMP)  ## throughput, latency, resolver, memory and replica figures in one run
	$(PY) -m bench

bench-quick: $(STAMP)
	$(PY) -m bench --quick

FUZZ_SECONDS ?= 60
FUZZ_STAMP := $(VENV)/.fuzz-installed

$(FUZZ_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,fuzz]'
	touch $(FUZZ_STAMP)

fuzz: $(FUZZ_STAMP)  ## the parser under atheris for FUZZ_SECONDS (not part of make test)
	mkdir -p .fuzz-corpus
	$(PY) fuzz/parser_fuzz.py -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 .fuzz-corpus

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info .fuzz-corpus
