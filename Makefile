# The two commands of the README: `make demo` and `make test`. Both create .venv and install into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch and torchvision are installed first, as a pair that matches (override for another platform).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# `make demo WEIGHTS=/path/to/model.safetensors` uses local weights; the default asks the hub.
WEIGHTS ?= hf_hub:xiangjx/musk
DEMO_DIR := demo_out

.PHONY: demo test install install-dev lint bench clean web chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# DeepSpeed (for the ZeRO-2 test) is built against the installed torch, hence outside the dev extra.
$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-build-isolation 'deepspeed>=0.16'
	touch $@

install: $(VENV)/.installed web
install-dev: $(VENV)/.installed-dev web

# The `musk serve` page's viewer: OpenSeadragon from the npm registry (web/package-lock.json), its built files
# copied into the package's static folder (git-ignored; never committed). Without npm the page has no viewer.
VIEWER := src/musk/serve/static/vendor/openseadragon
OSD_BUILD := web/node_modules/openseadragon/build/openseadragon
web: $(VIEWER)/openseadragon.min.js

$(VIEWER)/openseadragon.min.js: web/package.json web/package-lock.json
	@if command -v npm >/dev/null; then \
		cd web && npm ci --no-audit --no-fund --loglevel=error && cd .. && \
		rm -rf $(VIEWER) && mkdir -p $(VIEWER) && \
		cp -R $(OSD_BUILD)/openseadragon.min.js $(OSD_BUILD)/images web/node_modules/openseadragon/LICENSE.txt $(VIEWER)/; \
	else echo "npm not found: the musk serve page will have no slide viewer (its browser tests skip)"; fi

# Debian's Chromium for the page's browser tests, installed when missing and apt-get can (as root).
chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium not installed (needs root and apt-get): the browser tests of musk serve skip"

demo: $(VENV)/.installed
	@slide=$$($(BIN)/python scripts/fetch_sample_slide.py) && \
	$(BIN)/musk zeroshot "$$slide" --weights "$(WEIGHTS)" \
		--classes "lung adenocarcinoma" "breast carcinoma" "colon adenocarcinoma" "benign tissue" \
		--output $(DEMO_DIR)/zeroshot.csv

test: $(VENV)/.installed-dev web chromium
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache web/node_modules $(VIEWER)
