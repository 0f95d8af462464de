# The two commands a newcomer runs: `make run` and `make test`.
PY       ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
DEMO_HOME ?= $(CURDIR)/.demo-home
PYTEST_ARGS ?=

.PHONY: run test bench lint deps venv clean release native

deps:
	@./scripts/install-system-deps.sh

$(BIN)/.locked: requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/pip install -q --disable-pip-version-check --require-hashes -r requirements.lock
	@$(BIN)/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

venv: deps $(BIN)/.locked native

# Optional native code, built by the normal install: the audit record encoder and canonical
# checker (src/stockade/audit/_native.c). Without a compiler the Python paths run, same results.
NATIVE_AUDIT = src/stockade/audit/_native$(shell test -x $(BIN)/python && $(BIN)/python -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
native: $(BIN)/.locked
	@$(MAKE) -s $(NATIVE_AUDIT) || echo "stockade: native audit module not built (needs gcc and libssl-dev); the Python paths run" >&2

$(NATIVE_AUDIT): src/stockade/audit/_native.c
	@$(CC) -O2 -shared -fPIC $$($(BIN)/python -c 'import sysconfig; print("-I" + sysconfig.get_paths()["include"])') $< -lcrypto -o $@

# make run PORT=7701 DASHBOARD_PORT=7801 (ROTATE=1 gives the demo agent a new key)
PORT ?= 7700
DASHBOARD_PORT ?= 7800
run: venv
	@$(BIN)/stockade demo --home $(DEMO_HOME) --port $(PORT) --dashboard-port $(DASHBOARD_PORT) $(if $(ROTATE),--rotate-key)

# Third-party MCP servers the upstream tests drive (tests/upstream), pinned by hash, in their own
# venv and node_modules (a node from npm comes with them).
SERVERS := .test-servers
$(SERVERS)/.locked: tests/upstream/requirements.lock tests/upstream/package.json tests/upstream/package-lock.json
	@test -x $(SERVERS)/py/bin/python || $(PY) -m venv $(SERVERS)/py
	@$(SERVERS)/py/bin/pip install -q --disable-pip-version-check --require-hashes -r tests/upstream/requirements.lock
	@mkdir -p $(SERVERS)/node && cp tests/upstream/package.json tests/upstream/package-lock.json $(SERVERS)/node/
	@cd $(SERVERS)/node && npm ci --no-audit --no-fund --silent
	@touch $@

test: venv $(SERVERS)/.locked
	@$(BIN)/python -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "no tests collected: failing" >&2; exit 1; fi; exit $$rc

bench: venv
	@$(BIN)/stockade bench --json

# The signed, reproducible release of HEAD into dist/release (KEY: the publisher's private key file).
release: venv
	@test -n "$(KEY)" || { echo "usage: make release KEY=/path/to/publisher.key" >&2; exit 2; }
	@$(BIN)/stockade release build --key "$(KEY)" --out dist/release

lint: venv
	@$(BIN)/ruff check src tests bench
	@$(BIN)/mypy
	@$(BIN)/lint-imports

clean:
	@test ! -x $(BIN)/stockade || $(BIN)/stockade volume unmount --home $(DEMO_HOME) >/dev/null 2>&1 || true
	rm -rf $(VENV) $(DEMO_HOME) .pytest_cache
