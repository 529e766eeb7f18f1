# The two commands: `make demo` and `make test`. Both set themselves up from a fresh clone
# with only Python 3.11+ and make.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SAM_VENV := .venv-sam
SAM := $(SAM_VENV)/bin/sam
SAM_CLI_VERSION := 1.170.0
CHECKOV_VENV := .venv-checkov
CHECKOV_VERSION := 3.3.30
PIP_QUIET := --quiet --disable-pip-version-check
export PYTHONPATH := $(CURDIR):$(CURDIR)/layers/domain
# SAM CLI asks before sending telemetry; never here.
export SAM_CLI_TELEMETRY := 0

.PHONY: demo test local lint typecheck template-lint unit integration e2e chaos build bench clean help

help:
	@echo "make demo   - start the local stack, run one edit, save out/ and out/preview.png"
	@echo "make test   - ruff, mypy, cfn-lint, sam validate --lint, and every pytest ring"
	@echo "make local  - run the local stack in the foreground (Ctrl-C stops it)"
	@echo "make chaos  - 500 jobs through the local stack with every simulator and AWS fault on at random"
	@echo "make build  - sam build (needs python3.13 on PATH)"
	@echo "make bench  - benchmarks: finalize copy, cold start, 200 jobs, 120 jobs paced at 2/s, package size (a few minutes)"

$(VENV)/.installed: requirements-dev.txt layers/domain/requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or later is needed (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_QUIET) --upgrade pip > .venv-install.log 2>&1 || (cat .venv-install.log; exit 1)
	$(PY) -m pip install $(PIP_QUIET) -r requirements-dev.txt >> .venv-install.log 2>&1 || (cat .venv-install.log; exit 1)
	$(PY) -m pip install $(PIP_QUIET) --no-deps -e . >> .venv-install.log 2>&1 || (cat .venv-install.log; exit 1)
	@rm -f .venv-install.log
	@touch $@

# SAM CLI pins its own versions of shared packages, so it lives in an environment of its own.
$(SAM_VENV)/.installed:
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install $(PIP_QUIET) aws-sam-cli==$(SAM_CLI_VERSION) > .venv-sam-install.log 2>&1 || (cat .venv-sam-install.log; exit 1)
	@rm -f .venv-sam-install.log
	@touch $@

# checkov pins its own versions of boto3 and friends too.
$(CHECKOV_VENV)/.installed:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install $(PIP_QUIET) checkov==$(CHECKOV_VERSION) > .venv-checkov-install.log 2>&1 || (cat .venv-checkov-install.log; exit 1)
	@rm -f .venv-checkov-install.log
	@touch $@

# PROVIDER=runway (or kie, apikley, runware, crun, replicate) picks the provider the simulator plays.
demo: $(VENV)/.installed
	$(PY) -m local.demo $(if $(PROVIDER),--provider $(PROVIDER))

# make local PROVIDER_URL=https://... PROVIDER_KEYS=keys.json: every provider at <url>/<provider>
# with those keys, instead of the stack's own simulator (or set ALEPH_PROVIDER_URL/ALEPH_PROVIDER_KEYS).
local: $(VENV)/.installed
	$(PY) -m local.stack $(if $(PROVIDER_URL),--provider-url '$(PROVIDER_URL)') $(if $(PROVIDER_KEYS),--provider-keys '$(PROVIDER_KEYS)') $(foreach parameter,$(PARAMETERS),--parameter '$(parameter)')

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy layers/domain/aleph_pipeline functions local aleph_cli schemas tools

# The template after the SAM transform (samtranslator from .venv-sam): the roles, event source
# mappings, schedule and API that CloudFormation really creates.
TRANSFORMED := .local/template.transformed.json

template-lint: $(VENV)/.installed $(SAM_VENV)/.installed $(CHECKOV_VENV)/.installed
	$(VENV)/bin/cfn-lint template.yaml
	$(SAM_VENV)/bin/python tools/sam_expand.py template.yaml -o $(TRANSFORMED)
	$(VENV)/bin/cfn-lint $(TRANSFORMED)
	$(SAM) validate --lint --template template.yaml --region us-east-1
	# --skip-download and BC_SKIP_MAPPING keep checkov off the network; skips and reasons: .checkov.yaml
	BC_SKIP_MAPPING=TRUE $(CHECKOV_VENV)/bin/checkov --config-file .checkov.yaml --skip-download -f template.yaml

unit: $(VENV)/.installed
	$(PY) -m pytest tests/unit

integration: $(VENV)/.installed
	$(PY) -m pytest tests/integration

e2e: $(VENV)/.installed
	$(PY) -m pytest tests/e2e

# 500 jobs with every simulator and AWS-side fault switched on at random (seeded); prints the counts,
# fails on a lost, stuck or twice-paid job. `make test` runs a smaller one (tests/e2e/test_chaos.py).
chaos: $(VENV)/.installed
	$(PY) -m bench.chaos $(if $(SEED),--seed $(SEED)) $(if $(JOBS),--jobs $(JOBS))

test: lint template-lint
	$(PY) -m pytest tests

build: $(SAM_VENV)/.installed
	PYENV_VERSION=$${PYENV_VERSION:-3.11.7:3.12.1:3.13.0} $(SAM) build --template template.yaml

# Not part of `make test`: it takes minutes and its figures depend on the machine.
bench: $(VENV)/.installed $(SAM_VENV)/.installed
	SAM=$(abspath $(SAM)) $(PY) -m bench

clean:
	rm -rf .aws-sam .local out .mypy_cache .ruff_cache bench/.runtime bench/.runtime-*
