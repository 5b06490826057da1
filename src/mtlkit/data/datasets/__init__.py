"""Dataset loaders and synthetic generators."""
