"""``python -m vitviz``: see :mod:`vitviz.cli`."""

import sys

from vitviz.cli import main

if __name__ == "__main__":
    sys.exit(main())
