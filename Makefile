# edgelab: the two commands are `make lab` (build the lab, run site.yml on it)
# and `make test` (everything CI runs). Run as root: the lab creates
# containers, a bridge and mounts on this machine.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export ANSIBLE_LOCALHOST_WARNING := false
export ANSIBLE_FORCE_COLOR ?= $(if $(CI),0,1)
# Extra arguments for the lab play, e.g. make lab LAB_ARGS="-e lab_hosts=6".
LAB_ARGS ?=
PLAYBOOKS := $(wildcard playbooks/*.yml)
SCENARIOS := $(notdir $(patsubst %/molecule.yml,%,$(wildcard molecule/*/molecule.yml)))

.PHONY: lab lab-down site drills lint syntax sanity unit molecule test clean

# The controller's virtualenv with the pinned requirements.
$(VENV): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet --no-compile -r requirements.txt
	touch $(VENV)

## LAB_STRATEGY: the strategy of the plays `make lab`, `make site` and
## `make drills` run on the lab hosts: mitogen_linear (Mitogen for Ansible:
## one Python interpreter per host for the whole run, no SSH session and
## module upload per task; the default, and what CI's lab test runs) or
## linear (stock Ansible, what the molecule scenarios run). See
## docs/benchmarks.md, "Fewer tasks and plugins loaded once".
LAB_STRATEGY ?= mitogen_linear
LAB_PLAYBOOK = ANSIBLE_STRATEGY=$(LAB_STRATEGY) \
  ANSIBLE_STRATEGY_PLUGINS="$$(echo $(CURDIR)/$(VENV)/lib/python3*/site-packages/ansible_mitogen/plugins/strategy)" \
  ansible-playbook

## lab: bring up (or reuse) the lab, converge site.yml on it, run the
## experiment LAB_EXPERIMENT (experiments/NAME.yml; empty: none) and print
## the summary (hosts, URLs, credential files, the run's report and MLflow run)
LAB_EXPERIMENT ?= lab-smoke
lab: $(VENV)
	ansible-playbook playbooks/lab.yml $(LAB_ARGS)
	$(LAB_PLAYBOOK) -i inventory/lab playbooks/site.yml $(if $(LAB_EXPERIMENT),--skip-tags summary)
	$(if $(LAB_EXPERIMENT),rc=0; $(LAB_PLAYBOOK) -i inventory/lab playbooks/experiment.yml -e experiment=$(LAB_EXPERIMENT) || rc=$$?; \
	  $(LAB_PLAYBOOK) -i inventory/lab playbooks/summary.yml; exit $$rc)

## site: converge site.yml on the lab that is up
site: $(VENV)
	$(LAB_PLAYBOOK) -i inventory/lab playbooks/site.yml

## drills: the fault drills against the lab (docs/drills.md); DRILLS=kafka,consumer
## runs some of them (tags: ejabberd consumer host prometheus mlflow kafka)
DRILLS ?=
drills: $(VENV)
	$(LAB_PLAYBOOK) -i inventory/lab playbooks/drills.yml $(if $(DRILLS),--tags $(DRILLS))

## lab-down: remove the lab (containers, overlays, bridge, proxy, inventory)
lab-down: $(VENV)
	ansible-playbook playbooks/lab.yml -e lab_state=absent $(LAB_ARGS)

## lint: yamllint, ansible-lint (production profile), syntax of every playbook,
## ruff and mypy on the Python (agents package, modules, tests, benchmarks),
## ansible-test sanity on the modules in library/
lint: $(VENV) syntax sanity
	yamllint --strict .
	ansible-lint --profile production
	ruff check .
	mypy --config-file agents/pyproject.toml agents/src

## sanity: ansible-test sanity (all its tests) on library/ laid out as a collection
sanity: $(VENV)
	@start=$$(date +%s); tests/sanity.sh; echo "sanity: $$(( $$(date +%s) - start ))s"

syntax: $(VENV)
	@for p in $(PLAYBOOKS); do \
	  ansible-playbook -i inventory/nuc-cluster --syntax-check "$$p" >/dev/null && echo "syntax ok: $$p"; \
	done

## unit: pytest (project checks and the agents package)
unit: $(VENV)
	pytest -q tests --durations=25

## molecule: the molecule scenarios (all, or SCENARIOS="a b"), one after
## another, each on fresh lab hosts. In CI a scenario still running after
## MOLECULE_TIMEOUT seconds is stopped and fails ("molecule NAME: timed out
## after"; its lab is removed by .ci/run's teardown); empty: no bound (the
## default outside CI: `timeout` runs its command in a process group of its
## own, out of reach of the terminal's Ctrl-C).
MOLECULE_TIMEOUT ?= $(if $(CI),2700,)
molecule: $(VENV)
	@for s in $(SCENARIOS); do \
	  start=$$(date +%s); r=0; $(if $(MOLECULE_TIMEOUT),timeout -k 30 $(MOLECULE_TIMEOUT)) molecule test -s "$$s" || r=$$?; \
	  if [ $$r -eq 124 ]; then echo "molecule $$s: timed out after $(MOLECULE_TIMEOUT)s"; exit 1; fi; \
	  [ $$r -eq 0 ] || exit $$r; \
	  echo "molecule $$s: $$(( $$(date +%s) - start ))s"; \
	done

## test: everything CI runs: lint, then two lanes at once (the machine has
## two cores and much of a scenario is waiting on hosts): pytest followed by
## the scenarios in LANE1_SCENARIOS, and the other scenarios. Each line is
## prefixed with its lane; each lane prints its time. A lane passed only if
## its log ends with its "rc=0" line (`wait` on a finished background
## pipeline gave 0 for a failed lane once). A failed lane prints its last
## lines, then where it failed (.ci/failures.awk: the failed tasks, tests
## and scenarios), last, as CI shows only the end of the output.
LANE1_SCENARIOS ?= kafka
test: lint
	@mkdir -p .cache; rc=0; t0=$$(date +%s); \
	lane1="$(filter $(LANE1_SCENARIOS),$(SCENARIOS))"; lane2="$(filter-out $(LANE1_SCENARIOS),$(SCENARIOS))"; \
	( r=0; { $(MAKE) --no-print-directory unit && { [ -z "$$lane1" ] || $(MAKE) --no-print-directory molecule SCENARIOS="$$lane1"; }; } || r=$$?; \
	  echo "lane 1 (unit $$lane1): $$(( $$(date +%s) - t0 ))s rc=$$r"; exit $$r ) 2>&1 | sed -u 's/^/[lane1] /' | tee .cache/test-lane1.log & p1=$$!; \
	( r=0; $(MAKE) --no-print-directory molecule SCENARIOS="$$lane2" || r=$$?; \
	  echo "lane 2 ($$lane2): $$(( $$(date +%s) - t0 ))s rc=$$r"; exit $$r ) 2>&1 | sed -u 's/^/[lane2] /' | tee .cache/test-lane2.log & p2=$$!; \
	wait $$p1 || rc=1; wait $$p2 || rc=1; \
	for n in 1 2; do grep -q "^\[lane$$n\] lane $$n .* rc=0$$" .cache/test-lane$$n.log && continue; \
	  rc=1; echo "::: lane $$n failed; its last lines (whole log: .cache/test-lane$$n.log):"; tail -n 8 .cache/test-lane$$n.log; \
	  echo "::: lane $$n, where it failed:"; awk -f .ci/failures.awk .cache/test-lane$$n.log | tail -n 20; \
	done; \
	exit $$rc

clean: lab-down
	rm -rf .cache
