"""Tests of the pytest plugin (``unified_rollback``)."""
