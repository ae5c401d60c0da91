# `make test` and `make demo` each build their own virtual environment.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint soak bench clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,load]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check geviso tests loadtests examples
	$(BIN)/mypy geviso

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -m "not slow" tests

soak: $(STAMP)
	$(BIN)/python -m pytest -q -m slow tests

bench: $(STAMP)
	$(BIN)/geviso bench

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
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
