"""``python -m musk.bench eval ...`` is ``musk bench eval ...``."""

import sys

from ..cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
