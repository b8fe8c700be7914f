#!/usr/bin/env bash
# Lab and role-base timings, on a lab of its own ("bench", 10.213.252.0/24).
#   benchmarks/lab_timings.sh           image and package caches as they are
#   benchmarks/lab_timings.sh --cold    empty caches in a temporary directory
#                                       (debootstrap downloads from the mirror)
# Prints one line per step; the baseline, measured in the same run, is an
# `ansible -m ping` of the lab's hosts (Ansible's fixed cost on this machine),
# and every converge figure is also printed as a ratio to it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" ANSIBLE_LOCALHOST_WARNING=false ANSIBLE_NOCOLOR=1
inv=$(mktemp -d)
args=(-e lab_name=bench -e lab_subnet=10.213.252.0/24 -e "lab_inventory_dir=$inv")
cache=""
if [ "${1:-}" = "--cold" ]; then
  cache=$(mktemp -d)
  args+=(-e "lab_cache_dir=$cache")
fi
log=$(mktemp)
cleanup() {
  ansible-playbook playbooks/lab.yml "${args[@]}" -e lab_state=absent >/dev/null 2>&1 || true
  [ -n "$cache" ] && rm -rf "$cache"
  rm -rf "$inv" "$log"
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
recap() { grep -E '^bench[0-9]+ +:' "$log" | awk '{c+=substr($4,9); f+=substr($6,8)} END {printf "  (changed=%d failed=%d)", c, f}'; }

ansible-playbook playbooks/lab.yml "${args[@]}" -e lab_state=absent >/dev/null 2>&1 || true
timed "lab up, ${1:---cached} (3 hosts)" ansible-playbook playbooks/lab.yml "${args[@]}"; echo
timed "baseline: ansible ping, 3 hosts" ansible -i "$inv" nucs -m ansible.builtin.ping; base=$secs; echo
ratio() { awk -v s="$secs" -v b="$base" 'BEGIN {printf "  = %.1f x baseline", s / b}'; }
timed "site.yml converge (base)" ansible-playbook -i "$inv" playbooks/site.yml; ratio; recap; echo
timed "site.yml no-op re-run" ansible-playbook -i "$inv" playbooks/site.yml; ratio; recap; echo
timed "site.yml --check --diff" ansible-playbook -i "$inv" playbooks/site.yml --check --diff; ratio; recap; echo
timed "lab down" ansible-playbook playbooks/lab.yml "${args[@]}" -e lab_state=absent; echo
