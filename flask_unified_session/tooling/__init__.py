"""Developer tooling for flask-unified-session: the ``check`` linter and the ``migrate`` codemod.

Nothing in the runtime package imports this subpackage, and ``libcst`` is only imported by the
``migrate`` command (install it with ``pip install 'flask-unified-session[tooling]'``).
"""
