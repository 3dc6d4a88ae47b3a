.PHONY: setup demo test lint bench browser

setup:
	./scripts/setup.sh

demo:
	./scripts/demo.sh

lint: setup
	.venv/bin/ruff check src tests benchmarks
	.venv/bin/mypy

browser:
	./scripts/setup-browser.sh

test: lint browser
	.venv/bin/python -m pytest

bench: setup
	.venv/bin/python benchmarks/bench_pipeline.py
