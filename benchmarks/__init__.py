"""Benchmarks of flask-unified-session against SQLAlchemy and Flask-SQLAlchemy.

Run with ``python -m benchmarks`` (``make bench``); ``--quick`` for a short run. Every
candidate runs in the same process, interleaved round by round (A B C A B C ...), and the
median of the rounds is reported, as wall time and as CPU time per operation, with the
ratio to the reference candidate beside the absolute figures. See ``docs/performance.md``.
"""
