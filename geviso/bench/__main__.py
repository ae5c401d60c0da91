"""``python -m geviso.bench``: the same as ``geviso bench``."""

import sys

from .command import main

sys.exit(main())
