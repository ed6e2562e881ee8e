"""Unit tests: one proxy module each, in memory, no subprocesses; they run in seconds."""
