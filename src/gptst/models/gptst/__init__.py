"""GPT-ST mask autoencoder (GPTST_SPEC): config, fast and naive blocks, model, adaptive masker,
losses, the pre-training objective and the self-contained encoder bundle.

Importing the package imports none of its modules: import each from its own module, so a
stage's import closure (its DVC deps) holds only what it uses.
"""
