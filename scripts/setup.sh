#!/usr/bin/env bash
# One-shot, idempotent set-up: the venv with exactly the locked versions (hash-checked), the
# package, and the third-party assets (sha256-checked). `--test` also installs the test-only
# Python packages and the system packages the test suite needs (PostgreSQL server, Chromium,
# Redis for the Celery deployment test, FFmpeg to serve live streams to `maskjob ingest`).
#
# requirements/runtime.lock   what maskjob needs to run (every package, pinned, with hashes)
# requirements/test.lock      runtime.lock plus the test tools, same pins (`make lock` makes both)
# requirements/test-nodeps.lock  facenet-pytorch, test-only, installed without its dependencies
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

need_apt=()
if [ "$want_test" = 1 ]; then
  [ -x /usr/lib/postgresql/15/bin/initdb ] || need_apt+=(postgresql-15)
  command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
  command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
  command -v ffmpeg >/dev/null 2>&1 || need_apt+=(ffmpeg)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PY"
  "$PY" -m venv .venv
fi

# Each step runs again only when its input files change: a stamp in .venv keeps their sha256.
inputs_sum() { cat "$@" | sha256sum | cut -d' ' -f1; }
is_current() { local stamp=$1; shift; [ "$(cat "$stamp" 2>/dev/null)" = "$(inputs_sum "$@")" ]; }

if ! is_current .venv/.maskjob-pip.sha256 requirements/pip.lock; then
  .venv/bin/python -m pip install -q --require-hashes -r requirements/pip.lock
  inputs_sum requirements/pip.lock > .venv/.maskjob-pip.sha256
fi

runtime_inputs=(requirements/runtime.lock pyproject.toml)
runtime_stamp=.venv/.maskjob-runtime.sha256
if ! is_current "$runtime_stamp" "${runtime_inputs[@]}"; then
  echo "setup: installing requirements/runtime.lock (hash-checked; torch and torchvision come from local disk)"
  .venv/bin/pip install -q --require-hashes -r requirements/runtime.lock
  # The package itself, editable. No build isolation: the locked setuptools builds it, offline.
  .venv/bin/pip install -q --no-deps --no-build-isolation -e .
  rm -f .venv/.maskjob-lock.sha256  # the stamp of the single requirements.lock that came before
  inputs_sum "${runtime_inputs[@]}" > "$runtime_stamp"
fi

if [ "$want_test" = 1 ]; then
  test_inputs=(requirements/runtime.lock requirements/test.lock requirements/test-nodeps.lock)
  test_stamp=.venv/.maskjob-test.sha256
  if ! is_current "$test_stamp" "${test_inputs[@]}"; then
    echo "setup: installing the test-only packages (requirements/test.lock, requirements/test-nodeps.lock)"
    .venv/bin/pip install -q --require-hashes -r requirements/test.lock
    # facenet-pytorch's metadata pins an ancient torch: install it alone, hash-checked, no deps.
    .venv/bin/pip install -q --no-deps --require-hashes -r requirements/test-nodeps.lock
    inputs_sum "${test_inputs[@]}" > "$test_stamp"
  fi
fi

.venv/bin/maskjob assets fetch
.venv/bin/maskjob weights install mobilenet_v2
