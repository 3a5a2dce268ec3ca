"""Example apps built on ``processor``."""
