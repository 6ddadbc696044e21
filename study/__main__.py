"""``python -m study`` = the ``fishtune`` command."""

import sys

from study.cli import main

sys.exit(main())
