"""saeatlas: map the feature spaces of language models with sparse autoencoders."""

__version__ = "0.1.0"
