"""Side-by-side benchmarks: the proxy, proxpi and nginx on loopback (`python bench/run.py`)."""
