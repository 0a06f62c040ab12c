"""GPT-ST pipeline library."""
