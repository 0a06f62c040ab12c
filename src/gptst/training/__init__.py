"""Training: the trainer (checkpoints, resume, early stopping, DDP), pre-training and fine-tuning.

Importing the package imports none of its modules: import each from its own module, so a
stage's import closure (its DVC deps) holds only what it uses.
"""
