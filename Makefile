# The two commands a new user needs:
#   make demo   set everything up, then run the main job end to end (SQLite, demo data)
#   make test   set everything up, then run the whole test suite
.PHONY: setup setup-test demo test bench

setup:
	scripts/setup.sh

setup-test:
	scripts/setup.sh --test

demo: setup
	.venv/bin/maskjob run

test: setup-test
	.venv/bin/python -m pytest -p no:cacheprovider tests

bench: setup
	.venv/bin/python benchmarks/train_throughput.py
	.venv/bin/python benchmarks/score_throughput.py
	.venv/bin/python benchmarks/report_speed.py
