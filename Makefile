# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv if missing
# and are idempotent: the install step reruns only when setup.cfg or pyproject.toml change.
VENV    := .venv
PY      := $(VENV)/bin/python
PYTHON  ?= $(shell command -v python3.11 || command -v python3)
BIN     := $(CURDIR)/$(VENV)/bin
DEMO_RESULTS ?= results/demo

.PHONY: demo test doctor-demo run-demo bench clean-demo

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed

# The main job on the bundled demo: the doctor's report, then the gated runner. The needs lock
# lives with the demo's results, not beside the bundled registry, so the checkout stays clean.
# Exit status 1 from the doctor means "something is blocked", which is the expected truth on a
# machine whose caches do not hold the demo's weights; the runner then holds those back.
demo: $(VENV)/.installed
	@echo "== mutation-doctor -ec settings/demo.json"
	@PATH="$(BIN):$$PATH" $(BIN)/mutation-doctor -ec settings/demo.json --probe-timeout 2 \
	  --needs-lock $(DEMO_RESULTS)/needs.lock.json; \
	  echo "(doctor exit status $$?: 0 all can run, 1 some are blocked)"
	@echo
	@echo "== mutation-run --require-preflight -ec settings/demo.json"
	PATH="$(BIN):$$PATH" $(BIN)/mutation-run --require-preflight -ec settings/demo.json \
	  --results-dir $(DEMO_RESULTS) --timeout 300 --probe-timeout 2 \
	  --needs-lock $(DEMO_RESULTS)/needs.lock.json; \
	  status=$$?; [ $$status -le 1 ] || exit $$status

test: $(VENV)/.installed-test
	$(BIN)/pytest -q -ra

bench: $(VENV)/.installed-test
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b --quick || exit 1; done

clean-demo:
	rm -rf $(DEMO_RESULTS)
