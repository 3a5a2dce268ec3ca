from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kafka_support import Kafka, broker


@pytest.fixture(scope="session")
def kafka() -> Iterator[Kafka]:
    """A real Kafka broker for the whole session (see tests/kafka_support.broker for where from)."""
    with broker() as k:
        yield k
