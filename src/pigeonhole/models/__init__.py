"""Models: training requests, immutable versions, activation and rollback, export, prediction."""
