# Two commands do all set-up on a fresh machine:
#   make lab   - create .venv, install everything, open JupyterLab on notebooks/
#   make test  - create/update the same environment, then run the whole suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch is pinned for this set-up only; the library itself accepts any torch >= 2.4.
TORCH  ?= torch==2.13.0
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
ROOT_FLAG := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)

.PHONY: lab test venv system-deps lint bench clean

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

lab: venv system-deps
	$(BIN)/jupyter lab --notebook-dir=notebooks $(ROOT_FLAG)

lint: venv
	$(BIN)/ruff check .

test: venv system-deps lint
	$(BIN)/python -m pytest

bench: venv
	$(BIN)/python bench/replay.py

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache .hypothesis
