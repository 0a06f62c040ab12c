"""Models: the GPT-ST pre-training model (:mod:`gptst.models.gptst`)."""
