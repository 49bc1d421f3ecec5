"""artsim: how similar are AI-generated derivatives of paintings to their originals."""

__version__ = "0.1.0"
