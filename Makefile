# The two commands a new user needs:
#   make demo   set everything up, then run the main job end to end (SQLite, demo data)
#   make test   set everything up, then run the whole test suite
# Packaging:
#   make wheel  build dist/maskjob-<version>-py3-none-any.whl (templates, migrations and DAG file inside)
#   make lock   re-resolve requirements/{runtime,test}.lock from pyproject.toml with pip-tools,
#               keeping every existing pin; move one with LOCK_ARGS="--upgrade-package NAME"
.PHONY: setup setup-test demo test bench wheel lock

setup:
	scripts/setup.sh

setup-test:
	scripts/setup.sh --test

# The demo selects mobilenet_v2: its ImageNet file is the one the offline assets provide
# (the default transfer model, resnet18, needs its own file: `maskjob weights install resnet18 --from FILE`).
demo: setup
	.venv/bin/maskjob run --transfer-arch mobilenet_v2

test: setup-test
	.venv/bin/python -m pytest -p no:cacheprovider tests

bench: setup
	.venv/bin/python benchmarks/train_throughput.py
	.venv/bin/python benchmarks/score_throughput.py
	.venv/bin/python benchmarks/score_throughput.py --only-options --frames 240
	.venv/bin/python benchmarks/write_speed.py --frames 4000
	.venv/bin/python benchmarks/report_speed.py
	.venv/bin/python benchmarks/scale.py --sqlite

# setuptools builds in build/ and never prunes it: start clean so no deleted module ships.
wheel: setup
	rm -rf build/lib build/bdist.*
	.venv/bin/pip wheel -q --no-deps --no-build-isolation -w dist .
	@ls dist/maskjob-*.whl

# pip-tools runs pip itself, so it resolves from the same indexes and pip configuration that
# scripts/setup.sh installs from. test.lock is runtime.lock plus the test tools, constrained
# to runtime.lock's pins. facenet-pytorch (requirements/test-nodeps.lock) is kept by hand: its
# metadata cannot be resolved against torch 2.14.
LOCK_VENV := .venv-lock
LOCK_ARGS ?=
PIP_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile -q --generate-hashes \
	--allow-unsafe --no-emit-index-url --no-emit-find-links --no-emit-trusted-host $(LOCK_ARGS)

lock: $(LOCK_VENV)/bin/pip-compile
	$(PIP_COMPILE) -o requirements/runtime.lock pyproject.toml
	$(PIP_COMPILE) --extra test -c requirements/runtime.lock -o requirements/test.lock pyproject.toml

$(LOCK_VENV)/bin/pip-compile:
	python3.11 -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q pip-tools==7.6.2
