"""Layer 6, stages: one module per notebook, ``sNN_<name>.py``, each with ``run(P)`` and ``load(P)``."""
