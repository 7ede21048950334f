# Set-up and entry points. `make demo` and `make test` create the virtual environment when missing.
PYTHON ?= python3.11
VENV ?= .venv
TORCH ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin

.PHONY: install demo test bench-speed clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: install
	if [ -f runs/demo/config.yaml ]; then $(BIN)/s4al run --resume runs/demo; else $(BIN)/s4al run --config demo --out runs/demo; fi
	$(BIN)/s4al report runs/demo

test: install
	$(BIN)/python -m pytest -q

bench-speed: install
	$(BIN)/python benchmarks/speed.py --out benchmarks/results

clean:
	rm -rf runs .pytest_cache
