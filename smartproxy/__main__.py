"""``python -m smartproxy`` is the ``smartproxy`` command."""

import sys

from .cli import main

sys.exit(main())
