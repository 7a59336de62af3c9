"""Persistent intent: SQLite store of instance specs, the operation journal, settings."""
