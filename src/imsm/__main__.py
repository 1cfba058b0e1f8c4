"""`python -m imsm` runs the command line."""

import sys

from imsm.cli import main

sys.exit(main())
