"""The one exception type for bad input: it names the file, the field and the problem."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input file or parameter.

    Stage scripts catch it, print ``str(err)`` and exit non-zero, so every message must say
    where (``source``: a file path or ``params.yaml``), what (``field``: a key, column, dataset
    key or expectation) and why (``problem``).
    """

    def __init__(self, source: str | Path, field: str | None, problem: str) -> None:
        self.source = str(source)
        self.field = field
        self.problem = problem
        where = f"{self.source}: {field}" if field else self.source
        super().__init__(f"{where}: {problem}")
