"""``python -m mailerd``."""

import sys

from mailerd.cli import main

sys.exit(main())
