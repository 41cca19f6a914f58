# Two commands do all the set-up on a fresh machine:
#   make run    - the main job on its embedded default (SynthAVS -> shards -> summary)
#   make test   - the test suite
# Both create .venv/ from requirements.lock first (once; again when the lock changes).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
PYTEST_ARGS ?=
# Test processes (pytest-xdist). Most of the suite's time is spent in one process waiting on
# another (Prefect servers, Ray start-up, flows in subprocesses), so two share 2 cores well. A
# file's tests stay in one process (--dist loadfile): their module fixtures are built once.
TEST_WORKERS ?= 2

.PHONY: run test install lock clean

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# The ephemeral Prefect server creates its database on the first run; Prefect's 20 s wait for
# it is short on a busy 2-core machine.
run: $(STAMP)
	PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=$${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-120} \
	$(PY) -m flows.pipeline $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Re-resolve the pins after changing pyproject.toml's dependencies (see README). Every package
# keeps its pinned version except those named in UPGRADE (distribution names, space-separated;
# UPGRADE=all re-resolves everything): a plain re-resolve takes the newest release of every
# package, which once swapped s3fs 2026.9.0 for 0.4.2 to fit the newest boto3.
UPGRADE ?=
lock:
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/pip install --quiet --upgrade pip
	$(PYTHON) -c 'import re, sys; up = {re.sub(r"[-_.]+", "-", n).lower() for n in sys.argv[1:]}; \
	  keep = [l for l in open("requirements.lock") if "all" not in up and re.sub(r"[-_.]+", "-", l.split("==")[0]).lower() not in up]; \
	  open(".lockenv/constraints.txt", "w").writelines(keep)' $(UPGRADE)
	.lockenv/bin/pip install --quiet -c .lockenv/constraints.txt -e '.[test]'
	.lockenv/bin/pip freeze --exclude-editable | grep -v '^avs-at-scale' > requirements.lock
	rm -rf .lockenv

clean:
	rm -rf $(VENV) outputs .pytest_cache
