# `make run`: the app on SQLite, the in-memory channel layer and the demo provider.
# `make test`: the suite against the local PostgreSQL and Redis.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/chat
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15
BENCH_SMOKE_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/bench_smoke

.PHONY: run test test-js test-fast chaos lint format install install-dev migrate clean bench bench-smoke

$(VENV)/.runtime: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(VENV)/bin/pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

migrate: install
	$(PY) manage.py migrate --noinput

# Development only: settings are production (DJANGO_DEBUG unset) unless told otherwise.
run: export DJANGO_DEBUG = true
run: migrate
	$(PY) manage.py seed_personas
	$(PY) manage.py create_demo_user --url http://$(HOST):$(PORT)
	@echo "Serving on http://$(HOST):$(PORT)/ (Ctrl+C to stop)"
	$(VENV)/bin/uvicorn chatproject.asgi:application --host $(HOST) --port $(PORT) \
		--ws websockets-sansio --lifespan off --no-proxy-headers

test: install-dev test-js
	DJANGO_DEBUG=true DATABASE_URL=$(TEST_DATABASE_URL) TEST_REDIS_URL=$(TEST_REDIS_URL) REDIS_URL= \
		$(VENV)/bin/pytest $(PYTEST_ARGS)

# The page's protocol state (static/chat/state.js), with Node's built-in runner: no npm.
test-js:
	node --test static/chat/tests/

test-fast: install-dev
	DJANGO_DEBUG=true DATABASE_URL=$(TEST_DATABASE_URL) TEST_REDIS_URL=$(TEST_REDIS_URL) REDIS_URL= \
		$(VENV)/bin/pytest -m "not browser and not slow" $(PYTEST_ARGS)

chaos: install-dev
	DJANGO_DEBUG=true DATABASE_URL=$(TEST_DATABASE_URL) TEST_REDIS_URL=$(TEST_REDIS_URL) REDIS_URL= CHAOS_TURNS=500 \
		$(VENV)/bin/pytest tests/workers/test_chaos.py -s -q $(PYTEST_ARGS)

# The streaming benchmark (3 interleaved repeats), ~40 min on 2 cores: bench/results/{results.md,bench.png,profile.md}
bench: install-dev
	$(PY) -m bench.run $(BENCH_ARGS)
	$(PY) -m bench.run --profile

# ~30 s, correctness only, the shipped configuration (CI runs it through tests/bench/)
bench-smoke: install-dev
	$(PY) -m bench.run --smoke --database-url $(BENCH_SMOKE_DATABASE_URL)

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DJANGO_DEBUG=true $(VENV)/bin/mypy .

format: install-dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) staticfiles test-output .pytest_cache .mypy_cache .ruff_cache
