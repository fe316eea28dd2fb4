"""``python -m example_app`` (``make run``): create the tables, seed, and serve.

Serves on http://127.0.0.1:5000 (``PORT`` changes the port) with waitress when it is
installed, else with Werkzeug's development server (no reloader).
"""

from __future__ import annotations

import os
import sys

from flask_unified_session import session_scope
from flask_unified_session.config import redact_url

from . import create_app
from .cli import create_tables
from .seed import seed_demo
from .settings import DEMO_PASSWORD, DEMO_USERNAME

HOST = "127.0.0.1"


def main() -> int:
    port = int(os.environ.get("PORT", "5000"))
    app = create_app()
    create_tables(app)
    with app.app_context(), session_scope() as session:
        added = seed_demo(session)
    url = f"http://{HOST}:{port}"
    print(f"database: {redact_url(app.config['SQLALCHEMY_DATABASE_URI'])}")
    print("demo data added" if added else "demo data already present")
    print(f"open {url}  (log in as {DEMO_USERNAME} / {DEMO_PASSWORD}; Ctrl-C stops)")
    sys.stdout.flush()
    try:
        from waitress import serve
    except ImportError:
        serve = None
    try:
        if serve is None:
            app.run(host=HOST, port=port, use_reloader=False)
        else:
            serve(app, host=HOST, port=port, threads=8)
    except KeyboardInterrupt:
        print("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
