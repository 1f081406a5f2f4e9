# The three commands README.md promises. Everything runs from the project's own virtualenv.
PY := .venv/bin/python

.PHONY: setup serve test
setup:  ## create .venv, install pinned dependencies (and podman for the container test, as root)
	bash scripts/setup.sh

serve:  ## serve verdicts on 127.0.0.1:3000 (imports the bundled default model when the store is empty)
	.venv/bin/bentoml serve --host 127.0.0.1 --port 3000

test:  ## the whole test suite
	$(PY) -m pytest
