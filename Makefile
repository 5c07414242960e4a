# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test reproduce benchmarks setup clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and exactly: this version is a local CPU wheel; anything looser pulls a CUDA build
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# badcrossbar (test cross-check) without deps: its pycairo, used only for plotting, does not build without system cairo
	$(BIN)/python -m pip install --quiet --no-deps badcrossbar==1.1.0
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/memlab demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# slow-marked tests: the full published reproductions (11 minutes measured on a busy 2-core
# machine), plus the whole fault matrix and the demo on every shipped bench (about 10 more, estimated from their parts)
reproduce: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

benchmarks: $(STAMP)
	$(BIN)/python benchmarks/simulator.py
	$(BIN)/python benchmarks/training.py
	$(BIN)/python benchmarks/bench_time.py --devices 32

clean:
	rm -rf $(VENV) memlab-runs
