"""A real language model, offline: its residual stream as training data, splicing a
reconstruction back in (``language_model``), and what a latent responds to (``feature_pages``)."""
