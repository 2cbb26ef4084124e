# Two commands do everything:  make demo  (run the assignments, build the report)  and  make test.
# Both set up a local virtual environment in .venv first (once; again when the pins change).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEV    := $(VENV)/.installed-dev

.PHONY: demo test test-fast bench gpu-check report clean

# The kit and what it runs on (no test tools: captum, pytest... come with `make test`).
$(STAMP): requirements.txt setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

$(DEV): $(STAMP) requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $(DEV)

# The drivers side by side, one worker process per CPU core, one thread each (the longest
# first); `make demo JOBS=1` runs them one after another in one process.
JOBS ?=
demo: $(STAMP)
	$(PY) -m assignments run --default $(if $(JOBS),--jobs $(JOBS))
	$(PY) -m assignments report

# Two test workers with one BLAS/torch thread each: two cores, no oversubscription.
ONE_THREAD := OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1
test: $(DEV)
	$(ONE_THREAD) $(PY) -m pytest -n 2 --dist loadfile -q

# The same without the tests marked slow (the drivers' quick runs, torchrun, real data):
# for development.
test-fast: $(DEV)
	$(ONE_THREAD) $(PY) -m pytest -n 2 --dist loadfile -q -m "not slow"

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

# On a machine with a GPU: the GPU tests, every torch driver on CUDA, the throughput
# benchmark; one JSON of results in runs/gpu_check/gpu_check.json.
gpu-check: $(DEV)
	$(PY) benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) runs .pytest_cache
