#!/usr/bin/env bash
# ansible-test sanity on the project's modules (library/*.py).
#
# ansible-test only runs inside a collection, so the modules are copied into a
# throwaway one, ansible_collections/edgelab/lab/plugins/modules/, in a temporary
# directory. The tests run in local mode (no container) with Python 3.11;
# ansible-test builds a virtual environment per test from PyPI and keeps it in
# ~/.ansible/test/venv/ for later runs.
#
# ansible-test starts each of those environments with a get-pip.py it downloads
# from Ansible's CI file server, which this machine cannot reach. When that
# script is not in ansible-test's cache yet, a stand-in is put there: it installs
# pip with the interpreter's own ensurepip and then lets that pip install what
# ansible-test asked for (the pinned pip) from the package index.
#
# Usage: tests/sanity.sh [TEST ...]   (default: every sanity test ansible-test has,
#                                      24 with ansible-core 2.19)
# Exits non-zero when any test reports an error. Measured on the 2-core machine:
# about 5 minutes the first time (one virtual environment per test from PyPI),
# about 40 s once those exist.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON_VERSION="${SANITY_PYTHON:-3.11}"

for tool in ansible-test python; do
    if [[ ! -x "$VENV/bin/$tool" ]]; then
        echo "sanity: $VENV/bin/$tool is missing: run 'make .venv' first" >&2
        exit 2
    fi
done

work="$(mktemp -d "${TMPDIR:-/tmp}/edgelab-sanity.XXXXXX")"
trap 'rm -rf "$work"' EXIT
collection="$work/ansible_collections/edgelab/lab"
mkdir -p "$collection/plugins/modules" "$collection/meta"
cp "$ROOT"/library/*.py "$collection/plugins/modules/"
cat > "$collection/galaxy.yml" <<'EOF'
namespace: edgelab
name: lab
version: 1.0.0
readme: README.md
authors:
  - edgelab maintainers
description: edgelab's Ansible modules, laid out as a collection for ansible-test sanity.
license:
  - GPL-3.0-or-later
EOF
printf '# edgelab.lab\n\nedgelab'"'"'s modules (library/ in the edgelab repository), for ansible-test sanity.\n' \
    > "$collection/README.md"
cat > "$collection/meta/runtime.yml" <<'EOF'
---
requires_ansible: ">=2.16.0"
EOF

# The stand-in get-pip.py, at the path ansible-test looks in before it downloads.
pip_version="$("$VENV/bin/python" - <<'EOF'
import types

from ansible_test._internal.python_requirements import get_venv_packages

print(get_venv_packages(types.SimpleNamespace(version="3.11"))["pip"])
EOF
)"
get_pip="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
if [[ ! -f "$get_pip" ]]; then
    mkdir -p "$(dirname "$get_pip")"
    cat > "$get_pip.tmp" <<'EOF'
"""Stand-in for get-pip.py (written by edgelab's tests/sanity.sh).

Installs pip with ensurepip, then runs that pip on the arguments get-pip.py was
given (ansible-test passes the pinned pip and pip options), minus get-pip.py's own
--no-setuptools and --no-wheel. ensurepip runs in a child process: in-process it
sets PIP_CONFIG_FILE=/dev/null for good, and the second pip would then miss the
machine's pip configuration (index, CA bundle).
"""
import subprocess
import sys

subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade"])
args = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", *args]))
EOF
    mv "$get_pip.tmp" "$get_pip"
    echo "sanity: wrote the pip bootstrap stand-in $get_pip"
fi

tests=()
for name in "$@"; do tests+=(--test "$name"); done

cd "$collection"
start=$SECONDS
status=0
PATH="$VENV/bin:$PATH" "$VENV/bin/ansible-test" sanity --python "$PYTHON_VERSION" --color no \
    "${tests[@]}" || status=$?
echo "sanity: ansible-test sanity finished in $((SECONDS - start)) s with status $status"
exit "$status"
