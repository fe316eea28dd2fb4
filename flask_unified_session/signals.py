"""Session lifecycle signals (blinker).

Each is sent with the sender (the Flask app, or the :class:`SessionFactory` outside Flask)
and the keyword arguments ``session``, ``duration`` (seconds since the session was opened)
and ``context`` (the session's ``info`` mapping: ``user_id``, ``endpoint``,
``request_id`` and what context providers add). Sending is skipped entirely while no
receiver is connected, so unused signals cost one attribute check per session.

This module needs blinker only, so scripts without Flask get the same signals.
"""

from __future__ import annotations

from blinker import Namespace

__all__ = ["session_closed", "session_committed", "session_opened", "session_rolled_back"]

_signals = Namespace()

session_opened = _signals.signal("session-opened", doc="A unit of work opened its session.")
session_committed = _signals.signal("session-committed", doc="A unit of work committed.")
session_rolled_back = _signals.signal("session-rolled-back", doc="A unit of work rolled back.")
session_closed = _signals.signal("session-closed", doc="A unit of work closed its session.")

ALL = (session_opened, session_committed, session_rolled_back, session_closed)


# The receiver dicts themselves: blinker connects and disconnects in place, never
# replacing them, so any(_RECEIVERS) tells a unit of work whether anyone listens.
_RECEIVERS = tuple(signal.receivers for signal in ALL)
