import pytest

from tests.redis_server import RedisServer


@pytest.fixture(scope="module")
def redis():
    """A private redis-server on a free port for the module's tests."""
    server = RedisServer().start()
    yield server
    server.stop()
