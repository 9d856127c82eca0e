# effconv: `make book` builds the book, `make test` runs everything CI runs.
# Both create the virtual environment (.venv) from requirements.txt when it is missing.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SCALE  ?= smoke
NOTEBOOKS := $(wildcard book/[0-9]*.md)

export PYTHONHASHSEED := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: all env book notebooks test clean

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

# Re-execute every chapter at $(SCALE) (smoke, tutorial or paper) and store the outputs.
notebooks: env
	@for nb in $(NOTEBOOKS); do \
		echo "executing $$nb at EFFCONV_SCALE=$(SCALE)"; \
		EFFCONV_SCALE=$(SCALE) $(BIN)/jupytext --to ipynb --execute $$nb || exit 1; \
	done

# Unit tests, the CUDA compile check, every notebook re-run against its stored outputs
# (nbval) and the book built with warnings as errors: what CI runs.
test: env
	EFFCONV_SCALE=smoke $(BIN)/python -m pytest -p no:cacheprovider -q \
		--nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
		tests book

clean:
	rm -rf _build .pytest_cache
