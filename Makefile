# Two commands do everything on a fresh machine with Python 3.11:
#   make run    install from requirements.lock, then semi-supervised learning in 30 minutes (quick preset)
#   make test   install from requirements.lock, run the test suite
PYTHON ?= python3.11
VENV := .venv
INSTALLED := $(VENV)/.installed
ARGS ?=

.PHONY: run test lock

$(INSTALLED): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet uv==0.13.8
	@# bytecode compiled at install: this machine sets PYTHONDONTWRITEBYTECODE, which doubles import times
	$(VENV)/bin/uv pip install --quiet --python $(VENV)/bin/python --compile-bytecode -r requirements.lock
	$(VENV)/bin/uv pip install --quiet --python $(VENV)/bin/python --no-deps -e .
	touch $@

run: $(INSTALLED)
	$(VENV)/bin/ssl-pipeline run --preset quick $(ARGS)

test: $(INSTALLED)
	$(VENV)/bin/pytest $(ARGS)

# Regenerate the lock after changing dependencies in pyproject.toml.
lock:
	$(VENV)/bin/uv pip compile pyproject.toml --extra test --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 -o requirements.lock
