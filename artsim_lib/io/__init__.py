"""Layer 1 (the bottom), io: run-directory paths, shards, provenance, image opening, locks, work logs, datasets."""
