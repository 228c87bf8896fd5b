"""Backends: where the requests of a batch actually run."""
