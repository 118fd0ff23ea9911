"""``python -m nmstream``: the same as the ``nmstream`` command."""

import sys

from nmstream.cli import main

sys.exit(main())
