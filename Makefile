# Two commands for a newcomer: `make demo` (the whole pipeline on the built-in demo) and `make test`.
# Each creates .venv and installs the project on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The environment has every importer's and parallel back-end's extra, so their tests run the real libraries, not the
# 'pip install' message. torch is installed first so that the project's torch range is already satisfied
# (CPU build here); on a CUDA machine set TORCH_SPEC to the build you want, e.g. TORCH_SPEC='torch==2.13.0 --index-url ...'.
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= demo-out

.PHONY: venv demo test lint clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH_SPEC)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,finetune,dask,ray,lhotse,datasets]'
	touch $@

demo: venv
	$(VENV)/bin/cltm demo --out $(DEMO_OUT)

test: venv
	$(PY) -m pytest -q -n 2

lint: venv
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) $(DEMO_OUT)
