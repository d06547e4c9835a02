# The two commands of the README: `make run` starts the workbench, `make test` runs the tests.
# Both create .venv when missing and install requirements.txt when it changed.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed

.PHONY: run test bench lint clean-venv

# The editable install gives the venv a `workbench` command that works from any folder.
$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

run: $(STAMP)
	$(PY) app.py $(ARGS)

# Most tests wait on processes, servers and browsers, so two run at a time (one file per process); those that
# time the machine or need it otherwise idle run alone afterwards. Exit code 5 is pytest's "no test selected".
TEST_WORKERS ?= 2

test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not serial" $(PYTEST_ARGS)
	$(PY) -m pytest -m serial $(PYTEST_ARGS) || [ $$? -eq 5 ]

bench: $(STAMP)
	@for script in bench/*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean-venv:
	rm -rf $(VENV)
