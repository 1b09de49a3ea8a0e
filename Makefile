# Two commands for a fresh machine: `make lab` and `make test`.
# Both use one virtual environment, installed from the exact pins in constraints.txt.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PIP    := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: lab test install lock clean notebooks

install: $(STAMP)

# Reinstall whenever the ranges or the pins change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet -c constraints.txt -e ".[dev,lab]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

# Re-execute every notebook in full mode (outputs committed; a test checks they are current).
notebooks: $(STAMP)
	$(BIN)/python -m mdiff_lite._nbrun notebooks/[0-9][0-9]_*.py

# Loopback only, token on. Jupyter refuses to run as root unless told to (containers, CI).
# The JupyterLab settings are Binder's (binder/overrides.json, installed there by binder/postBuild):
# .py notebooks open as notebooks, no news or update pop-ups.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)
LAB_OVERRIDES := $(VENV)/share/jupyter/lab/settings/overrides.json
$(LAB_OVERRIDES): binder/overrides.json $(STAMP)
	mkdir -p $(@D) && cp binder/overrides.json $@
lab: $(STAMP) $(LAB_OVERRIDES)
	$(BIN)/jupyter lab --ip=127.0.0.1 --no-browser $(ALLOW_ROOT) --ServerApp.root_dir=notebooks

# Re-resolve the ranges of pyproject.toml in a scratch environment and pin the result.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet "torch==2.13.0" -e ".[dev,lab]"
	printf '# Exact pins used by `make test` and `make lab`. Regenerate with `make lock`.\n' > constraints.txt
	.lock-venv/bin/python -m pip freeze --exclude-editable | sed 's/+cpu$$//' >> constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV)
