"""Layer 3, core: arrays in, arrays out (metrics, losses, splits, augmentations, descriptors, prompt text)."""
