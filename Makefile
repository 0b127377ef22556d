# encoder-study: `make book` runs the research book, `make test` runs the tests.
# Both set up the environment first (once; later calls find it done and skip the work).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-done
PIP    := $(PY) -m pip --disable-pip-version-check -q
export ENCODER_STUDY_CACHE ?= $(HOME)/.cache/encoder-study
export PIP_NO_WARN_SCRIPT_LOCATION := 1
export MPLBACKEND := Agg

.PHONY: setup data book test bench lab html clean-runs

setup: $(STAMP) data

$(STAMP): requirements.lock pyproject.toml
	@echo "== setup: $(VENV) from requirements.lock (python: $(PYTHON))"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements.lock > $(VENV)/pip.log 2>&1 || { tail -30 $(VENV)/pip.log; exit 1; }
	$(PIP) install --no-deps --no-build-isolation -e .
	$(PY) -c "import torch, encoder_study; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	$(PY) -m ipykernel install --user --name encoder-study --display-name "encoder-study (.venv)" >/dev/null
	@mkdir -p $(VENV)/share/jupyter/lab/settings
	@echo '{"@jupyterlab/docmanager-extension:plugin": {"defaultViewers": {"python": "Jupytext Notebook"}}}' \
		> $(VENV)/share/jupyter/lab/settings/overrides.json
	@touch $@

data: $(STAMP)
	@$(PY) -m encoder_study.data

# FRESH=1 retrains every run instead of reusing the run cache.
book: setup
	ENCODER_STUDY_FRESH=$(FRESH) $(PY) scripts/run_book.py --params params/paper

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/training_speed.py

lab: setup
	$(VENV)/bin/jupyter lab --allow-root notebooks/

html: setup
	$(PY) scripts/render_html.py

clean-runs:
	rm -rf $(ENCODER_STUDY_CACHE)/runs
