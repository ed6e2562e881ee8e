"""Test support: the fake GitLab, wheels, the proxy harness and process helpers (bench uses it)."""
