"""Tests of the ``check`` and ``migrate`` tooling."""
