"""Eight threads doing units of work: nothing shared, nothing lost, nothing leaked."""

from __future__ import annotations

import threading

from flask_unified_session import SessionFactory
from tests.conftest import Observer, User

THREADS = 8
UNITS = 40


def test_threads_each_get_their_own_unit(db_url: str, observer: Observer) -> None:
    """8 threads x 40 units: every row lands, no session is shared, the pool ends empty."""
    factory = SessionFactory(db_url)
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS)

    def work(index: int) -> None:
        try:
            barrier.wait()
            for unit in range(UNITS):
                with factory.session_scope() as session:
                    session.add(User(name=f"t{index}-u{unit}"))
                    with factory.session_scope() as joined:  # joins this thread's unit only
                        assert joined is session
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert observer.count() == THREADS * UNITS
    assert factory.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
