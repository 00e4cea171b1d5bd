"""``python -m hcl_jax.reproduce``: see the package's docstring."""

import sys

from hcl_jax.reproduce.cli import main

sys.exit(main())
