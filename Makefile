# Thin wrappers. `make run` and `make test` bootstrap everything they need on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUF := node_modules/.bin/buf

.PHONY: bootstrap run test gen check-gen lint breaking bench-api bench-sessions bench-data bench-analytics bench-media bench-asr bench-scheduling bench-slots clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --silent --no-audit --no-fund
	touch $@

clients/typescript/node_modules/.installed: clients/typescript/package.json clients/typescript/package-lock.json
	npm ci --silent --no-audit --no-fund --prefix clients/typescript
	touch $@

bootstrap: $(VENV)/.installed node_modules/.installed clients/typescript/node_modules/.installed

# Starts the platform on its embedded defaults (SQLite and local files in ./.data).
run: $(VENV)/.installed node_modules/.installed
	$(VENV)/bin/classwire serve

# The whole suite on SQLite; again on PostgreSQL when CLASSWIRE_TEST_POSTGRES_URL is set.
test: bootstrap
	scripts/system-deps.sh
	env -u CLASSWIRE_TEST_POSTGRES_URL $(PY) -m pytest -q
	@if [ -n "$$CLASSWIRE_TEST_POSTGRES_URL" ]; then \
		echo "== again on PostgreSQL"; \
		$(PY) -m pytest -q tests/integration tests/e2e tests/contract; \
	fi

gen: bootstrap
	scripts/gen.sh

# Fails when the committed generated code or docs differ from a fresh generation.
check-gen: gen
	@git add -N clients docs >/dev/null 2>&1 || true
	@git diff --exit-code --stat -- clients/python/classwire/api clients/typescript/src/gen docs \
		|| (echo "generated files are stale: run make gen and commit" && exit 1)

lint: bootstrap
	$(BUF) lint
	$(VENV)/bin/ruff check server plugins clients/python/classwire/client tests bench scripts

breaking: bootstrap
	$(BUF) breaking --against protos/baseline/classwire-v1.binpb

bench-api: bootstrap
	$(PY) bench/api.py

bench-sessions: bootstrap
	$(PY) bench/sessions.py

bench-data: bootstrap
	$(PY) bench/data.py

# Analytics on 10 million generated events: rollup queries vs a full scan of the log, in the
# same run. Takes about 20 minutes on two cores (mostly generating and scanning); quick run:
# make bench-analytics ARGS='--events 200000'.
bench-analytics: bootstrap
	$(PY) bench/analytics.py $(ARGS)

# Speech recognition: bare PocketSphinx vs the streaming provider vs the live WebRTC path.
bench-asr: bootstrap
	scripts/system-deps.sh
	$(PY) bench/asr.py

bench-media: bootstrap
	$(PY) bench/media.py

bench-scheduling: bootstrap
	$(PY) bench/scheduling.py

bench-slots: bootstrap
	$(PY) bench/slots.py

clean:
	rm -rf $(VENV) node_modules clients/typescript/node_modules .data
