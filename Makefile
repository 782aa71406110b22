# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?= conf/ocs.toml

.PHONY: run test install install-test build demo check-config bench clean

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# The editable install only links the source and installs the dependencies; the
# extensions are compiled once, in place, by `build` (pip would compile them
# again in a directory of its own).
$(VENV)/.installed: $(VENV)/bin/activate pyproject.toml setup.py
	OCS_NO_EXTENSIONS=1 $(PY) -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

## Rebuild the Cython extensions of cext/ in place (after editing a .pyx).
build: $(VENV)/.installed
	$(PY) setup.py --quiet build_ext --inplace

## Migrate the embedded store under ./var/, seed the demo data, run ocsd in the foreground.
run: $(VENV)/.installed build
	@mkdir -p var
	$(VENV)/bin/ocsctl --config $(CONFIG) db migrate
	$(VENV)/bin/ocsctl --config $(CONFIG) demo
	exec $(VENV)/bin/ocsd --config $(CONFIG)

# The request path end to end once more on the pure-Python twins of cext/ (the
# suite just ran on the compiled kernels; the twins are what runs where no C
# compiler was at hand).
TWIN_TESTS := tests/test_charging.py tests/test_radius_daemon.py tests/test_diameter_daemon.py \
              tests/test_live_fuzz.py

## The whole suite, against real PostgreSQL and Redis (see tests/services.py).
test: $(VENV)/.installed-test build
	$(PY) -m pytest -q $(PYTEST_ARGS)
ifeq ($(PYTEST_ARGS),)
	OCS_NO_EXTENSIONS=1 $(PY) -m pytest -q $(TWIN_TESTS)
endif

check-config: $(VENV)/.installed
	$(VENV)/bin/ocsd --config $(CONFIG) --check-config

bench: $(VENV)/.installed
	$(PY) -m bench.store

clean:
	rm -rf build $(VENV) var *.egg-info cext/*.c cext/*.so
