"""python -m edgelab.sro: the same as edgelab-sro."""

import sys

from .cli import main

sys.exit(main())
