# Two commands: `make demo` and `make test`. Everything else is called by them.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
SPU_STAMP := .venv-spu/.installed

.PHONY: setup test test-all demo bench spu lint catalog bundled-models clean

setup: $(STAMP)

# Order matters (see README "Install notes"): torch first so that nothing
# later pulls a CUDA build; crypten without its broken dependency list.
$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet --no-deps crypten==0.4.1
	$(PIP) install --quiet -c requirements/constraints.txt -e '.[dev]'
	touch $(STAMP)

# Two workers (the machines have two cores); a file's tests stay on one worker so that its
# module fixtures (exported models, calibrations) are built once.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

test-all: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m ''

demo: $(STAMP)
	$(PY) examples/two_party/run_demo.py

# the bench's layer table compares with SecretFlow-SPU: install it first (17 s here), so a
# run never drops the SPU rows for want of .venv-spu
bench: $(STAMP) $(SPU_STAMP)
	$(PY) -m benchmarks

# SecretFlow-SPU 0.9.5 in its own venv (it needs numpy < 2): `make bench` installs it and
# adds an SPU row to the layer table.
spu: $(SPU_STAMP)

$(SPU_STAMP):
	test -x .venv-spu/bin/python || $(PYTHON) -m venv .venv-spu
	.venv-spu/bin/python -m pip install --quiet spu==0.9.5
	touch $(SPU_STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

# Maintenance: retrain the bundled digits models in secinfer/data (the example writes
# elsewhere unless told to replace them).
bundled-models: $(STAMP)
	$(PY) examples/train_he_friendly.py --out secinfer/data --update-bundled

catalog: $(STAMP)
	$(PY) -m approximations catalog --plot docs/approximation_errors.png

clean:
	rm -rf $(VENV) .venv-spu build *.egg-info .pytest_cache
