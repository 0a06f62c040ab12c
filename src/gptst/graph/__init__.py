"""Graph stage library: read adjacency sources safely, build the series-ordered adjacency,
write/load the ``adjacency.npz`` contract, and the normalisations the baselines use.

Importing the package imports none of its modules: import each from its own module, so a
stage's import closure (its DVC deps) holds only what it uses.
"""
