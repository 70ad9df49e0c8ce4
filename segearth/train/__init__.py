"""Training: losses (and, later, the accelerate-based trainer)."""
