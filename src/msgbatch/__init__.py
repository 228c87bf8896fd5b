"""msgbatch: a self-hosted, drop-in Message Batches API."""

__version__ = "0.1.0"
