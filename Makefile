# effconv: `make book` builds the book, `make test` runs everything CI runs.
# Both create the virtual environment (.venv) from requirements.txt when it is missing.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SCALE  ?= smoke
NOTEBOOKS := $(wildcard book/[0-9]*.md)
# 1: every torchvision dataset is replaced by synthetic data of its shape (no downloads)
EFFCONV_OFFLINE ?= 0

export PYTHONHASHSEED := 0
export EFFCONV_OFFLINE
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: all env book notebooks colab test gpu clean

all: test

env: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# The HTML book, rendered from the committed notebook outputs.
book: env
	$(BIN)/jupyter-book build . --warningiserror --keep-going
	@echo "The book is at file://$(CURDIR)/_build/html/index.html"

# Re-execute every chapter at $(SCALE) (smoke, tutorial or paper) and store the outputs;
# EFFCONV_OFFLINE=1 runs them on synthetic data, without a network.
notebooks: env
	@for nb in $(NOTEBOOKS); do \
		echo "executing $$nb at EFFCONV_SCALE=$(SCALE) EFFCONV_OFFLINE=$(EFFCONV_OFFLINE)"; \
		EFFCONV_SCALE=$(SCALE) $(BIN)/jupytext --to ipynb --execute $$nb || exit 1; \
	done

# Every chapter run as Colab runs it, on a machine whose $(PYTHON) has torch (a GPU for
# tutorial scale): a fresh environment, effconv_ref installed from this checkout, each chapter's
# .ipynb executed at tutorial scale (SCALE=... to change) offline; prints the time per chapter.
# CHAPTERS=book/02_lowcost.ipynb runs one. The committed notebooks are not touched.
colab: SCALE = tutorial
colab: EFFCONV_OFFLINE = 1
colab:
	PYTHON=$(PYTHON) SCALE=$(SCALE) EFFCONV_OFFLINE=$(EFFCONV_OFFLINE) .ci/colab $(CHAPTERS)

# Unit tests, the CUDA compile check, every notebook re-run against its stored outputs
# (nbval) and the book built with warnings as errors: what CI runs.
test: env
	EFFCONV_SCALE=smoke $(BIN)/python -m pytest -p no:cacheprovider -q \
		--nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
		tests book

# On a machine with a GPU (an H100/H200; budgeted at 8 minutes, QUICK=1 halves the budget): the
# CUDA and Triton tests, compute-sanitizer on the CUDA kernels, every benchmark sweep into
# data/bench/*.json, one summary table against the targets (see effconv_ref/kernels/README.md).
QUICK ?= 0
gpu: env
	$(BIN)/python -m effconv_ref.gpu_check$(if $(filter 1,$(QUICK)), --quick)

clean:
	rm -rf _build .pytest_cache
