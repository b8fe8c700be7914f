#!/usr/bin/env bash
# Lab and role-base timings, on a lab of its own ("bench", 10.213.252.0/24).
#   benchmarks/lab_timings.sh [--cold] [--knobs] [--inventory DIR] [SITE_ARGS...]
#     --cold    empty image and package caches in a temporary directory
#               (debootstrap downloads from the mirror)
#     --knobs   also the no-op re-run with one setting changed at a time, in
#               the same run: stock Ansible's linear strategy (no Mitogen),
#               linear with pipelining off, linear with ControlPersist off,
#               fact caching off, the plugin warming off (callback_plugins/)
#     --inventory DIR  a lab already converged (e.g. inventory/lab after
#               `make lab`): no lab up, converge or down; the baseline, the
#               no-op re-run, `--check --diff` and the knobs on its hosts
#     SITE_ARGS passed to every site.yml run (e.g. --skip-tags mlops)
# site.yml runs with the strategy `make lab` uses (the Makefile's
# LAB_STRATEGY). Prints one line per step; the baseline, measured in the same
# run, is an `ansible -m ping` of the lab's hosts (Ansible's fixed cost on
# this machine), and every converge figure is also printed as a ratio to it.
# After the converge and after the no-op re-run: the time per role
# (ansible.posix.profile_roles); the overhead per task and host of the no-op
# re-run (its time / the task results it made).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" ANSIBLE_LOCALHOST_WARNING=false ANSIBLE_NOCOLOR=1
inv=$(mktemp -d)
args=(-e lab_name=bench -e lab_subnet=10.213.252.0/24 -e "lab_inventory_dir=$inv")
cache="" cold="" knobs="" given=""
while [ $# -gt 0 ]; do
  case $1 in
    --cold) cold=1; shift ;;
    --knobs) knobs=1; shift ;;
    --inventory)
      [ -d "${2:-}" ] || { echo "lab_timings.sh: --inventory needs a lab inventory directory, got '${2:-}'" >&2; exit 2; }
      given=$(cd "$2" && pwd); shift 2 ;;
    *) break ;;
  esac
done
site_args=("$@")
# As make lab runs site.yml: the Makefile's LAB_STRATEGY, Mitogen's plugins.
strategy=$(sed -n 's/^LAB_STRATEGY ?= //p' Makefile)
[ -n "$strategy" ] || { echo "lab_timings.sh: no LAB_STRATEGY default in the Makefile" >&2; exit 2; }
lab=(env ANSIBLE_STRATEGY="$strategy"
     ANSIBLE_STRATEGY_PLUGINS="$(echo "$PWD"/.venv/lib/python3*/site-packages/ansible_mitogen/plugins/strategy)")
if [ -n "$cold" ]; then
  cache=$(mktemp -d)
  args+=(-e "lab_cache_dir=$cache")
fi
export ANSIBLE_CALLBACKS_ENABLED=ansible.posix.profile_tasks,ansible.posix.profile_roles
log=$(mktemp)
if [ -n "$given" ]; then
  rmdir "$inv"; inv=$given
  [ -z "$cold" ] || { echo "lab_timings.sh: --cold builds a lab of its own; it cannot go with --inventory" >&2; exit 2; }
fi
cleanup() {
  [ -n "$given" ] || ansible-playbook playbooks/lab.yml "${args[@]}" -e lab_state=absent >/dev/null 2>&1 || true
  [ -n "$cache" ] && rm -rf "$cache"
  [ -n "$given" ] || rm -rf "$inv"
  rm -f "$log"
}
trap cleanup EXIT

timed() { # LABEL COMMAND... ; prints "LABEL: N.Ns" and keeps the seconds in $secs
  local label=$1 t0 t1; shift
  t0=$(date +%s.%N)
  "$@" >"$log" 2>&1 || { tail -30 "$log"; echo "$label: FAILED"; exit 1; }
  t1=$(date +%s.%N)
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')
  printf '%-34s %7.1fs' "$label:" "$secs"
}
recap() { # the run's changed/failed totals, then the tasks that changed, if any
  grep -E '^[A-Za-z0-9_.-]+ +: ok=' "$log" | awk '{c+=substr($4,9); f+=substr($6,8)} END {printf "  (changed=%d failed=%d)", c, f}'
  awk '/^(TASK|RUNNING HANDLER) \[/ {t = $0; sub(/^[A-Z ]+\[/, "", t); sub(/\] \**$/, "", t)}
       /^changed: \[/ {h = $2; gsub(/[][]/, "", h); printf "\n    changed: %s: %s", t, h}' "$log"
}

if [ -z "$given" ]; then
ansible-playbook playbooks/lab.yml "${args[@]}" -e lab_state=absent >/dev/null 2>&1 || true
timed "lab up, $([ -n "$cold" ] && echo cold || echo cached) (3 hosts)" ansible-playbook playbooks/lab.yml "${args[@]}"; echo
fi
hosts=$(ansible -i "$inv" nucs --list-hosts 2>/dev/null | tail -n +2 | wc -l)
timed "baseline: ansible ping, $hosts hosts" ansible -i "$inv" nucs -m ansible.builtin.ping; base=$secs; echo
ratio() { awk -v s="$secs" -v b="$base" 'BEGIN {printf "  = %.1f x baseline", s / b}'; }
# Task results of the last run, all hosts: ok (changed ones included) + failed + skipped.
results() { grep -E '^[A-Za-z0-9_.-]+ +: ok=' "$log" | awk '{for (i = 3; i <= NF; i++) {split($i, kv, "="); if (kv[1] == "ok" || kv[1] == "failed" || kv[1] == "skipped") n += kv[2]}} END {print n}'; }
roles() { # the ROLES RECAP block profile_roles prints (tasks outside roles count by module)
  awk '/^ROLES RECAP/ {r = 1; next} r && /^total / {exit} r && / ---+ +[0-9.]+s *$/ {
         t = $NF; sub(/s$/, "", t); name = $0; sub(/ ---+.*$/, "", name); printf "    %-44s %8.1fs\n", name, t}' "$log"
}
if [ -z "$given" ]; then
  timed "site.yml converge ($strategy)" "${lab[@]}" ansible-playbook -i "$inv" playbooks/site.yml "${site_args[@]}"; ratio; recap; echo
  echo "  time per role (profile_roles):"; roles
fi
timed "site.yml no-op re-run ($strategy)" "${lab[@]}" ansible-playbook -i "$inv" playbooks/site.yml "${site_args[@]}"; ratio; recap
n=$(results); awk -v s="$secs" -v n="$n" 'BEGIN {printf "  %d task results, %.0f ms per task and host\n", n, 1000 * s / n}'
echo "  time per role (profile_roles):"; roles
timed "site.yml --check --diff ($strategy)" "${lab[@]}" ansible-playbook -i "$inv" playbooks/site.yml "${site_args[@]}" --check --diff; ratio; recap; echo
if [ -n "$knobs" ]; then
  # Stock Ansible (make lab LAB_STRATEGY=linear); pipelining and ControlPersist
  # are settings of its ssh connection, so they are measured with it.
  timed "no-op re-run, linear (stock)" env ANSIBLE_STRATEGY=linear \
    ansible-playbook -i "$inv" playbooks/site.yml "${site_args[@]}"; ratio; recap; echo
  timed "no-op re-run, linear, pipelining off" env ANSIBLE_STRATEGY=linear ANSIBLE_PIPELINING=False \
    ansible-playbook -i "$inv" playbooks/site.yml "${site_args[@]}"; ratio; recap; echo
  timed "no-op re-run, linear, ControlPersist off" env ANSIBLE_STRATEGY=linear \
    ANSIBLE_SSH_ARGS="-o ControlMaster=no -o PreferredAuthentications=publickey" \
    ansible-playbook -i "$inv" playbooks/site.yml "${site_args[@]}"; ratio; recap; echo
  timed "no-op re-run, fact caching off" "${lab[@]}" ANSIBLE_GATHERING=implicit ANSIBLE_CACHE_PLUGIN=ansible.builtin.memory \
    ansible-playbook -i "$inv" playbooks/site.yml "${site_args[@]}"; ratio; recap; echo
  # ansible.cfg's callback_plugins replaced by an empty directory: the workers
  # load Jinja's filter and test plugins themselves (callback_plugins/).
  empty=$(mktemp -d)
  timed "no-op re-run, plugin warming off" "${lab[@]}" ANSIBLE_CALLBACK_PLUGINS="$empty" \
    ansible-playbook -i "$inv" playbooks/site.yml "${site_args[@]}"; ratio; recap; echo
  rmdir "$empty"
fi
if [ -z "$given" ]; then
  timed "lab down" ansible-playbook playbooks/lab.yml "${args[@]}" -e lab_state=absent; echo
fi
