#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, slow tests included, plus ruff.
# Arguments go to pytest: `bash scripts/test.sh -m "not slow"` is the fast lane.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check quantkit tests scripts fixtures
# pytest's own temporary folders keep the last three runs (several GB of GGUFs each): this
# run gets its own, removed when it ends. Fixture models stay cached in .cache/test-fixtures.
basetemp=$(mktemp -d "${TMPDIR:-/tmp}/quantkit-pytest.XXXXXX")
trap 'rm -rf "$basetemp"' EXIT
set +e
# Two workers (pytest-xdist), each pinned to its own share of the CPUs (tests/conftest.py),
# whole test files to one worker so a module's fixtures are built once: on 2 cores the
# suite spends much of its time on one (starting servers, Python, files). `-n 0` after
# this script's name runs it in one process.
.venv/bin/python -m pytest -q -ra --durations=40 -n 2 --dist loadfile \
  --basetemp="$basetemp" "$@"
status=$?
set -e
if [[ $status -eq 5 ]]; then
  echo "pytest collected no tests; that is a failure for this project" >&2
  exit 1
fi
exit $status
