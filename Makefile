# Two entry points for a fresh machine: `make app` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
TORCH_VERSION ?= 2.13.0

.PHONY: app test setup clean-venv

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The pinned CPU build first (on this kind of machine it is on disk), so no CUDA wheels are pulled;
	# elsewhere fall back to whatever torch the platform offers.
	$(PIP) install -q "torch==$(TORCH_VERSION)" || $(PIP) install -q "torch>=2.4,<2.14"
	$(PIP) install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

app: setup
	$(VENV)/bin/workbench app

test: setup
	bash scripts/ensure-chromium.sh || echo "chromium unavailable: the browser test will be skipped"
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1 \
		$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
