# `make test`, `make demo` and `make docs` each build the virtual environment they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: test test-all demo docs lint soak bench package clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,load]'
	touch $(STAMP)

$(DOCS_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[docs]'
	touch $(DOCS_STAMP)

lint: $(STAMP)
	$(BIN)/ruff check geviso tests loadtests examples noxfile.py
	$(BIN)/mypy geviso

# One Python, fast: lint plus the suite (slow soaks excluded).
test: $(STAMP) lint
	$(BIN)/python -m pytest -q -m "not slow" tests

# Lint once, then the suite on every supported CPython found here (noxfile.py).
test-all: $(STAMP) lint
	$(BIN)/nox --no-color --reuse-venv=yes

soak: $(STAMP)
	$(BIN)/python -m pytest -q -m slow tests

bench: $(STAMP)
	$(BIN)/geviso bench

# sdist and wheel, twine check, and the wheel installed in a fresh venv runs the quickstart.
package: $(STAMP)
	$(BIN)/python .ci/check_package.py

# The documentation site (docs/, mkdocs.yml) into site/; any warning fails the build.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# The mixed Locust scenario (loadtests/) for about 20 s against the embedded mock host.
DEMO_USERS ?= 100
DEMO_REPORT ?= reports/locust-demo.html
demo: $(STAMP)
	@mkdir -p $(dir $(DEMO_REPORT))
	$(BIN)/locust -f loadtests --headless --users $(DEMO_USERS) --spawn-rate 50 --run-time 20s \
		--stop-timeout 5 --only-summary --html $(DEMO_REPORT) \
		--iso-max-failure-ratio 0.05 --iso-max-p99-ms 2000; \
	status=$$?; echo "HTML report: $(abspath $(DEMO_REPORT))"; exit $$status

clean:
	rm -rf $(VENV) .nox site dist build .pytest_cache .mypy_cache .ruff_cache
