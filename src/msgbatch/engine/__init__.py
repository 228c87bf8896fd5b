"""The engine: the dispatcher and the periodic lifecycle tasks."""
