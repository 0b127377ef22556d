"""encoder-study: decoder-free sparse features from log-sum-exp + InfoMax (implicit EM)."""

__version__ = "0.1.0"
