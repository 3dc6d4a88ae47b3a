.PHONY: setup demo test lint bench

setup:
	./scripts/setup.sh

demo:
	./scripts/demo.sh

lint: setup
	.venv/bin/ruff check src tests benchmarks
	.venv/bin/mypy

test: lint
	.venv/bin/python -m pytest

bench: setup
	.venv/bin/python benchmarks/bench_pipeline.py
