"""A process-wide default object, made on first use: the default sync and async factories.

Its lock is made again in a forked child: a thread that held it at fork does not exist
there, and the child would wait on it for ever.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["ProcessDefault"]

T = TypeVar("T")


class ProcessDefault(Generic[T]):
    """One ``T`` for the process, made by ``make`` on the first :meth:`get`."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._value: T | None = None
        self._lock = threading.Lock()
        if hasattr(os, "register_at_fork"):  # the defaults live as long as the process
            os.register_at_fork(after_in_child=self._renew_lock)

    def get(self) -> T:
        """The default, made now if there is none."""
        value = self._value
        if value is None:
            with self._lock:
                value = self._value
                if value is None:
                    value = self._value = self._make()
        return value

    def existing(self) -> T | None:
        """The default if it was made or set already; never makes one."""
        return self._value

    def set(self, value: T | None) -> None:
        """Replace the default (``None``: make one again on the next :meth:`get`)."""
        with self._lock:
            self._value = value

    def _renew_lock(self) -> None:
        self._lock = threading.Lock()
