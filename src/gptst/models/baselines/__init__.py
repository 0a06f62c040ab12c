"""Downstream baselines, one module each (BASELINES.md), and their registry (:mod:`.registry`).

Importing the package imports none of its modules: the registry imports one baseline's module
when it is asked for that baseline, so a finetune item's code closure holds only its own baseline.
"""
