"""Layer 7, plots: the figures of the report, one module per stage family."""
