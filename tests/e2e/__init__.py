"""End-to-end tests: the proxy on real ports, real clients, processes; all marked `e2e`."""
