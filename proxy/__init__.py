"""gitlab-pypi-proxy: a caching pull-through proxy in front of GitLab's PyPI registry."""
