# Two commands do all set-up on a fresh machine:
#   make lab   - create .venv, install everything, open JupyterLab on notebooks/
#   make test  - create/update the same environment, then run the whole suite
#   make differential - install SGLang 0.5.11 (CPU set) beside himamba, for `himamba differential`
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch is pinned for this set-up only; the library itself accepts any torch >= 2.4.
TORCH  ?= torch==2.13.0
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
ROOT_FLAG := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)

.PHONY: lab test venv system-deps lint bench clean differential sglang-0.5.23

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)

# The graphviz Python package needs the `dot` program; the browser test needs Debian's chromium.
# Set SKIP_BROWSER=1 to skip installing chromium (the browser test then skips itself).
APT_PKGS := $(if $(shell command -v dot),,graphviz) $(if $(SKIP_BROWSER),,$(if $(wildcard /usr/bin/chromium),,chromium))
system-deps:
	@if [ -n "$(strip $(APT_PKGS))" ]; then \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends $(APT_PKGS); fi

# SGLang 0.5.11 for the differential runner: the package without its dependencies (they would pull
# a CUDA torch and several GB) plus the pinned set that lets its cache modules import on a CPU.
SGLANG_PINS := requirements/sglang-0.5.11-cpu.txt
UPSTREAM_STAMP := $(VENV)/.sglang-0.5.11-installed

differential: $(UPSTREAM_STAMP)

$(UPSTREAM_STAMP): $(STAMP) $(SGLANG_PINS)
	@test -f $(SGLANG_PINS) || { echo "missing $(SGLANG_PINS) (the pinned CPU set for SGLang 0.5.11)"; exit 1; }
	$(BIN)/python -m pip install -q --no-deps "sglang==0.5.11" -r $(SGLANG_PINS)
	@touch $(UPSTREAM_STAMP)

# SGLang 0.5.23 (the unified tree, Python and Rust tree cores) cannot share .venv with 0.5.11, so it
# gets its own environment: the package without its dependencies, its pinned CPU set, and himamba
# itself; the lens reaches it through a subprocess (himamba/lens/remote.py).
SGLANG23_VENV  := .venv-sglang-0.5.23
SGLANG23_PINS  := requirements/sglang-0.5.23-cpu.txt
SGLANG23_STAMP := $(SGLANG23_VENV)/.installed

sglang-0.5.23: $(SGLANG23_STAMP)

$(SGLANG23_STAMP): $(SGLANG23_PINS) pyproject.toml
	@test -x $(SGLANG23_VENV)/bin/python || $(PYTHON) -m venv $(SGLANG23_VENV)
	$(SGLANG23_VENV)/bin/python -m pip install -q "$(TORCH)"
	$(SGLANG23_VENV)/bin/python -m pip install -q --no-deps "sglang==0.5.23" -r $(SGLANG23_PINS)
	$(SGLANG23_VENV)/bin/python -m pip install -q -e .
	@touch $(SGLANG23_STAMP)

lab: venv system-deps
	$(BIN)/jupyter lab --notebook-dir=notebooks $(ROOT_FLAG)

lint: venv
	$(BIN)/ruff check .

# The suite includes a differential smoke run against SGLang 0.5.11, so `test` installs it first
# (about 1.5 minutes from the registry); the smoke test skips itself where SGLang is absent.
test: venv system-deps lint differential sglang-0.5.23
	$(BIN)/python -m pytest

bench: venv
	$(BIN)/python bench/replay.py

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache .hypothesis
