"""What every stage entry point and the ``gptst`` command share: errors become exit codes.

Kept tiny on purpose: every DVC stage imports it, so everything it imports is in every stage's deps.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from gptst.errors import EXIT_OK, InputError
from gptst.timing import begin_stage, record_stage_timings


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
    began, code = begin_stage(), 1
    try:
        code = body() or EXIT_OK
        return code
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        hint = restore_hint()
        if hint:
            print(hint, file=sys.stderr)
        code = err.exit_code
        return code
    except BaseException:
        hint = restore_hint()
        if hint:
            print(hint, file=sys.stderr)
        raise
    finally:
        record_stage_timings(os.environ.get("DVC_STAGE") or os.path.basename(sys.argv[0]), began, code)
