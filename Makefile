# The two commands of the README: `make demo` and `make test`. Both create .venv and install into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch and torchvision are installed first, as a pair that matches (override for another platform).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# `make demo WEIGHTS=/path/to/model.safetensors` uses local weights; the default asks the hub.
WEIGHTS ?= hf_hub:xiangjx/musk
DEMO_DIR := demo_out

.PHONY: demo test install install-dev lint bench clean

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

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	@slide=$$($(BIN)/python scripts/fetch_sample_slide.py) && \
	$(BIN)/musk zeroshot "$$slide" --weights "$(WEIGHTS)" \
		--classes "lung adenocarcinoma" "breast carcinoma" "colon adenocarcinoma" "benign tissue" \
		--output $(DEMO_DIR)/zeroshot.csv

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
