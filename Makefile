SHELL=/bin/bash
LINT_PATHS=sb3_parallel_dqn/ tests/ scripts/ docs/

pytest:
	python -m pytest -m "not slow" -n 2 --dist loadfile

pytest-slow:
	python -m pytest -m slow -n 2 --dist loadfile

type:
	mypy sb3_parallel_dqn/

lint:
	ruff check ${LINT_PATHS}

format:
	ruff check --select I --fix ${LINT_PATHS}
	ruff format ${LINT_PATHS}

check-codestyle:
	ruff format --check ${LINT_PATHS}

commit-checks: format type lint

.PHONY: pytest pytest-slow type lint format check-codestyle commit-checks
