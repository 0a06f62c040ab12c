"""Data validation with Great Expectations 1.x (ephemeral context, one checkpoint, no Data Docs).

Importing this package does not import GX (6-7 s); :func:`validate_dataset` and
:func:`new_context` do.
"""

from gptst.validation.gx_run import new_context
from gptst.validation.validate import ValidationReport, validate_dataset

__all__ = ["ValidationReport", "new_context", "validate_dataset"]
