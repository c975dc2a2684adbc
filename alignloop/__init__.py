"""alignloop: the whole RLHF loop as real software."""

__version__ = "0.1.0"
