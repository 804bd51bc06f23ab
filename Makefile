# The two commands of the README:
#   make demo   set up .venv, build the embedded demo workspace, train every demo model on CPU
#   make test   set up .venv, run ruff, mypy and the whole test suite (what CI runs)
#   make gpu-check   on a CUDA machine: GPU tests + the 8B-shaped GPU benchmark (<= 8 min)
# The venv pins CPU torch 2.13.0 (a local wheel here); the Dockerfile installs the CUDA build.

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: venv demo test lint bench gpu-check clean chromium

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	# The system pip (23.x) backtracks for minutes on this dependency set: upgrade it first.
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip check
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(VENV)/bin/oneseek-job demo --run
	$(VENV)/bin/oneseek-job verify demo/artifacts --current --public-key demo/keys/oneseek-signing.pub
	# The run's signed report is inside it; this renders it again with a fresh verification.
	$(VENV)/bin/oneseek-job report demo/artifacts --current --public-key demo/keys/oneseek-signing.pub --out demo/report.html

lint: venv
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The run report's browser test needs Debian's headless Chromium (CI runs as root).
chromium:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

# One worker per core (at most 4), a test file per worker: the servers (SeaweedFS, moto,
# MLflow) start once per worker, and half the suite waits on them and on subprocesses.
test: lint chromium
	$(PY) -m pytest -n auto --maxprocesses 4 --dist loadfile

bench: venv
	$(PY) -m bench

# On a machine with one CUDA GPU and the CUDA build of torch, in at most 8 minutes: the
# GPU-only tests (CUDA attention kernels vs the reference, bf16 training), then ours vs
# HF Trainer + DataCollatorWithFlattening + SDPA on a Llama-3.1-8B-shaped model (LoRA r16,
# seq 2048), printing tokens/s, MFU and peak memory.
gpu-check: venv
	timeout 180 $(PY) -m pytest -q -m gpu tests/test_attention.py tests/test_training.py
	timeout 300 $(PY) -m bench.train_throughput --gpu --methods ours,hf_flatten --steps 12

clean:
	rm -rf demo work artifacts .pytest_cache .mypy_cache .ruff_cache
