import pytest
import sqlalchemy as sa

from common import SUFFIX, Audit, Base, User, observer_engine


@pytest.fixture
def unified_truncate_tables():
    """Other runs share the servers: look after this run's tables only."""
    return lambda name: SUFFIX in name


@pytest.fixture(scope="session", autouse=True)
def schema():
    """The tables, made once before every test; left for the outer test to look at."""
    engine = observer_engine()
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    yield
    engine.dispose()


@pytest.fixture(scope="session")
def _observer():
    engine = observer_engine()
    yield engine
    engine.dispose()


@pytest.fixture
def committed(_observer):
    """User names that are committed, seen from a connection of its own."""

    def names():
        with _observer.connect() as connection:
            return sorted(connection.scalars(sa.select(User.name)))

    return names


@pytest.fixture
def audits(_observer):
    """Audit messages that are committed, seen from a connection of its own."""

    def messages():
        with _observer.connect() as connection:
            return sorted(connection.scalars(sa.select(Audit.message)))

    return messages
