"""Side-by-side benchmarks: the proxy against proxpi and nginx, on loopback (`python bench/run.py`)."""
