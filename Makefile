# The two commands: `make demo` and `make test`. Both create .venv at the project root when needed.
VENV ?= .venv
# The torch requirement installed first; elsewhere pick CUDA or CPU, e.g.
# make demo TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install browser clean

$(PY):
	python3 -m venv $(VENV)

# torch is pinned first so pip takes the CPU wheel on disk instead of a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/negforge build --config deployments/datasets/scifact-demo.yaml

# The UI test drives Debian's chromium and chromium-driver (nothing can download a browser here): installed when missing.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver; }

# Two pytest workers, a test file each at a time: each has its own Prefect server and Dask cluster; a test run keeps
# both cores busy (87%) where one process left them idle half the time (56%), waiting on the Prefect API and startup.
test: $(STAMP) browser
	$(PY) -m pytest -q -n 2 --dist loadfile tests

clean:
	rm -rf registry .negforge
