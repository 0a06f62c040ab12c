"""Evaluation: test forecasts on disk, comparison tables, bootstrap intervals, breakdowns, figures."""
