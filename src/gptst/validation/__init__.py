"""Data validation with Great Expectations 1.x (ephemeral context, one checkpoint, no Data Docs).

Importing this package does not import GX (6-7 s); :func:`validate_dataset` and
:func:`new_context` do.


Importing the package imports none of its modules: import each from its own module, so a
stage's import closure (its DVC deps) holds only what it uses.
"""
