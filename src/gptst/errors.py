"""The project's error types and the exit codes every stage and the CLI use.

Exit codes (one set, everywhere; Prefect retries only :data:`EXIT_CRASH`):

- ``0`` (:data:`EXIT_OK`): success.
- ``1`` (:data:`EXIT_CRASH`): an unexpected exception (a bug, out of memory, a transient failure).
- ``2`` (:data:`EXIT_BAD_INPUT`): bad input file or parameter (:class:`InputError`).
- ``3`` (:data:`EXIT_INVALID_DATA`): the data was read but validation blocked it (:class:`InvalidDataError`).
"""

from __future__ import annotations

from pathlib import Path

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_BAD_INPUT = 2
EXIT_INVALID_DATA = 3

# Exit codes a retry cannot fix: the same input fails the same way.
NON_RETRYABLE_EXIT_CODES = frozenset({EXIT_BAD_INPUT, EXIT_INVALID_DATA})


class InputError(Exception):
    """Bad input file or parameter.

    Stage scripts catch it, print ``str(err)`` and exit non-zero, so every message must say
    where (``source``: a file path or ``params.yaml``), what (``field``: a key, column, dataset
    key or expectation) and why (``problem``).
    """

    exit_code = EXIT_BAD_INPUT

    def __init__(self, source: str | Path, field: str | None, problem: str) -> None:
        self.source = str(source)
        self.field = field
        self.problem = problem
        where = f"{self.source}: {field}" if field else self.source
        super().__init__(f"{where}: {problem}")


class InvalidDataError(InputError):
    """Data that could be read but that validation blocks (a failed blocking expectation)."""

    exit_code = EXIT_INVALID_DATA
