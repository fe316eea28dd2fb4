"""Run the tooling command line: ``python -m flask_unified_session``."""

import sys

from flask_unified_session.tooling.cli import main

sys.exit(main())
