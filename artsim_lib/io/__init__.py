"""Layer 2, io: run-directory paths, shards, provenance, image opening, locks, work logs, datasets."""
