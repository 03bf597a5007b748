"""`python -m servekit` runs the command line."""

import sys

from servekit._cli.main import main

sys.exit(main())
