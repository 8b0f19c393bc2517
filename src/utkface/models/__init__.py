"""Models (torch): the registry of networks, preprocessing, checkpoints, inference and export."""
