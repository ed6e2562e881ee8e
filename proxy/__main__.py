"""`python -m proxy`: the same program as the `gitlab-pypi-proxy` command."""

from .cli import main

raise SystemExit(main())
