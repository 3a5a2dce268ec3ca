"""App options are checked when the App is made: a wrong type or value names the option."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import processor as p


@pytest.mark.parametrize(("options", "says"), [
    ({"partitions": "four"}, "partitions='four': must be an int or None"),
    ({"partitions": 0}, "partitions=0: must be >= 1"),
    ({"partitions": True}, "partitions=True: must be an int"),
    ({"max_in_flight": 2.5}, "max_in_flight=2.5: must be an int"),
    ({"step_threads": 0}, "step_threads=0: must be >= 1"),
    ({"suspend_after": 5}, "suspend_after=5: must be a datetime.timedelta (e.g. timedelta(seconds=5))"),
    ({"retention": timedelta(seconds=-1)}, "retention=datetime.timedelta(days=-1, seconds=86399): must be >= 0:00:00"),
    ({"transaction_timeout": timedelta(hours=1)}, "must be >= 0:00:01 and <= 0:15:00"),
    ({"commit_linger": timedelta(seconds=10), "transaction_timeout": timedelta(seconds=5)},
     "commit_linger=datetime.timedelta(seconds=10): must be shorter than transaction_timeout (0:00:05)"),
    ({"invocation_retry": {"max_attempts": 3}}, "must be a processor.RetryPolicy"),
    ({"serde": "json"}, "serde='json': must be a Serde"),
    ({"on_exhausted": "pause"}, "on_exhausted='pause': must be one of p.OnExhausted.PAUSE"),
    ({"kafka_config": [("acks", "all")]}, "kafka_config=[('acks', 'all')]: must be a mapping"),
    ({"transaction_timeout_ms": 5000}, "transaction_timeout_ms is now transaction_timeout=timedelta(seconds=...)"),
    ({"commit_linger_ms": 10}, "commit_linger_ms is now commit_linger=timedelta(milliseconds=...)"),
    ({"no_such_option": 1}, "unexpected keyword argument 'no_such_option'"),
])
def test_a_wrong_option_is_refused_with_its_name(options: dict[str, Any], says: str) -> None:
    with pytest.raises(p.ConfigurationError) as e:
        p.App("opts", **options)
    assert says in str(e.value)


def test_the_defaults_and_good_values_pass() -> None:
    app = p.App("opts")
    assert app.config.transaction_timeout == timedelta(seconds=10)
    assert app.config.transaction_timeout_ms == 10_000
    app = p.App("opts", partitions=4, max_in_flight=10, suspend_after=timedelta(0),
                transaction_timeout=timedelta(seconds=30), commit_linger=timedelta(milliseconds=5))
    assert app.config.partitions == 4
