"""python -m edgelab.ima: the same as edgelab-ima."""

import sys

from .cli import main

sys.exit(main())
