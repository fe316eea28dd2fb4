"""Run the tooling command line: ``python -m flask_unified_session``."""

import sys

from flask_unified_session.tooling.cli import main

if __name__ == "__main__":
    sys.exit(main())
