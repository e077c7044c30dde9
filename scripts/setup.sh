#!/usr/bin/env bash
# One-shot, idempotent set-up: the venv with exactly the locked versions, the package,
# and the third-party assets (sha256-checked). `--test` also installs the system
# packages the test suite needs (PostgreSQL server, Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

need_apt=()
if [ "$want_test" = 1 ]; then
  [ -x /usr/lib/postgresql/15/bin/initdb ] || need_apt+=(postgresql-15)
  command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
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
stamp=.venv/.maskjob-lock.sha256
lock_sum=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$lock_sum" ]; then
  echo "setup: installing locked dependencies (torch and torchvision come from local disk)"
  .venv/bin/pip install -q -r requirements.lock
  # facenet-pytorch's metadata pins an ancient torch; its MTCNN runs on torch 2.14.
  .venv/bin/pip install -q --no-deps facenet-pytorch==2.6.0
  .venv/bin/pip install -q --no-deps -e .
  echo "$lock_sum" > "$stamp"
fi

.venv/bin/maskjob assets fetch
.venv/bin/maskjob weights install mobilenet_v2
