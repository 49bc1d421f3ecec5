"""Layer 5, measures: the ``Measure`` interface, the registry of named measures and their scoring."""
