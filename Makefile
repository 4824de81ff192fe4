# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv and install charkit with its dev extras first (once; reinstalled when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# transformers 5.24 breaks peft text-encoder LoRA; torch/torchvision pair that controlnet_aux imports with.
PINS := torch==2.14.1 torchvision==0.29.1 transformers==5.23.0 diffusers==0.42.1 peft==0.21.2
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export OMP_NUM_THREADS ?= 1
PYTEST_WORKERS ?= 2

.PHONY: install browser demo test lint format fix-copies bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PINS) -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/charkit demo

# Debian's chromium for the report-in-a-real-browser test (playwright drives it; it never downloads a browser).
browser:
	@command -v chromium >/dev/null 2>&1 || for try in 1 2 3; do \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null && break; \
		sleep 5; done

lint: install
	$(VENV)/bin/ruff check charkit tests benchmarks examples
	$(VENV)/bin/ruff format --check charkit tests benchmarks examples

format: install
	$(VENV)/bin/ruff check --fix charkit tests benchmarks examples
	$(VENV)/bin/ruff format charkit tests benchmarks examples

# Rewrite the `# Copied from` copies in the family folders from their sources (tests/test_copies.py checks them).
fix-copies: install
	$(PY) -m charkit.testing.check_copies --fix

test: install browser lint
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile tests

bench: install
	$(PY) benchmarks/bench_verify.py

clean:
	rm -rf $(VENV) build *.egg-info
