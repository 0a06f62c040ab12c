"""What every stage entry point and the ``gptst`` command share: errors become exit codes.

Kept tiny on purpose: every DVC stage imports it, so everything it imports is in every stage's deps.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from gptst.errors import EXIT_OK, InputError


def restore_hint() -> str:
    """The command that puts back the outputs DVC removed before running the failed stage, or ''."""
    stage = os.environ.get("DVC_STAGE")
    return (
        f"previous outputs of stage {stage} are in the DVC cache: restore them with `dvc checkout {stage}`"
        if stage
        else ""
    )


def run_stage(body: Callable[[], int | None]) -> int:
    """Run a stage body and return its exit code (:mod:`gptst.errors`).

    :class:`~gptst.errors.InputError` (2) and :class:`~gptst.errors.InvalidDataError` (3) become one
    clear line on stderr; any other exception propagates (Python exits 1 with the traceback).
    Outputs are written atomically by the library, so an error leaves earlier outputs as they were.
    """
    try:
        return body() or EXIT_OK
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        hint = restore_hint()
        if hint:
            print(hint, file=sys.stderr)
        return err.exit_code
    except BaseException:
        hint = restore_hint()
        if hint:
            print(hint, file=sys.stderr)
        raise
