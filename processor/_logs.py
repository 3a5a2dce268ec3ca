"""Log output: librdkafka's own lines through Python logging (rate-limited), and the JSON format.

librdkafka logs through the ``logger`` client setting: confluent-kafka hands each line to
``logger.log(level, "%s [%s] %s", facility, client, text)`` from the client's poll/flush, with the
syslog level already mapped (emerg/alert/crit -> CRITICAL, err -> ERROR, warning -> WARNING,
notice/info -> INFO, debug -> DEBUG). ``KAFKA_LOG`` is that logger for every client of the process:
a broker that is down makes every client log the same failure again and again (hundreds of ``FAIL``
lines a minute), so lines alike (same level and facility, same text but for numbers) pass once per
``interval_s``; the next one that passes says how many were held back. DEBUG lines (the ``debug``
setting) all pass: whoever turns them on wants them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

KAFKA_LOGGER = "processor.librdkafka"
INTERVAL_S = 30.0
_THREAD = re.compile(r"^\[thrd:[^\]]*\]: ")
_NUMBER = re.compile(r"\d+")


class RateLimiter:
    """Lets one event per key through per `interval_s`, counting the ones held back."""

    def __init__(self, interval_s: float, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 1024) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._max_keys = max_keys
        self._lock = threading.Lock()  # clients are polled on several threads
        self._keys: dict[Hashable, tuple[float, int]] = {}  # key -> (when it last passed, held back since)
        self.suppressed = 0  # held back in all, ever

    def admit(self, key: Hashable) -> int | None:
        """None to hold the event back; else it passes, and the number held back since the last one
        of its key passed is returned."""
        now = self._clock()
        with self._lock:
            seen = self._keys.get(key)
            if seen is not None and now - seen[0] < self.interval_s:
                self._keys[key] = (seen[0], seen[1] + 1)
                self.suppressed += 1
                return None
            if seen is None and len(self._keys) >= self._max_keys:
                self._forget(now)
            self._keys[key] = (now, 0)
            return 0 if seen is None else seen[1]

    def _forget(self, now: float) -> None:
        """Drop keys whose interval is over (their held-back counts are lost), else the oldest half."""
        old = [k for k, (t, _) in self._keys.items() if now - t >= self.interval_s]
        for k in old or list(self._keys)[: len(self._keys) // 2]:
            del self._keys[k]


class KafkaLog:
    """The ``logger`` of every Kafka client: librdkafka lines to logger ``processor.librdkafka``,
    alike lines once per interval (see the module docstring)."""

    def __init__(self, logger: logging.Logger | None = None, *, interval_s: float = INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger or logging.getLogger(KAFKA_LOGGER)
        self.limiter = RateLimiter(interval_s, clock=clock)

    def log(self, level: int, _fmt: str, *args: Any) -> None:
        """Called by confluent-kafka as ``log(level, "%s [%s] %s", facility, client, text)``."""
        if len(args) != 3:  # not the shape confluent-kafka uses: pass it on as it is
            self.logger.log(level, _fmt, *args)
            return
        facility, client, text = (str(a) for a in args)
        text = _THREAD.sub("", text)
        if not self.logger.isEnabledFor(level):
            return
        extra = {"kafka_facility": facility, "kafka_client": client}
        if level <= logging.DEBUG:
            self.logger.log(level, "%s %s", facility, text, extra=extra)
            return
        held = self.limiter.admit((level, facility, _NUMBER.sub("#", text)))
        if held is None:
            return
        if held:
            extra["kafka_suppressed"] = held  # type: ignore[assignment]
            self.logger.log(level, "%s %s (%d more like it in the last %.0fs not shown)", facility, text, held,
                            self.limiter.interval_s, extra=extra)
        else:
            self.logger.log(level, "%s %s", facility, text, extra=extra)


KAFKA_LOG = KafkaLog()
"""The one instance every client of this process logs through, so alike lines of all of them count
together."""


_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, the
    ``context`` fields (app, instance), any ``extra=`` fields, and ``exception`` when there is one."""

    def __init__(self, context: dict[str, str] | None = None) -> None:
        super().__init__()
        self.context = context if context is not None else {}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **self.context,
        }
        for k, v in vars(record).items():
            if k not in _STANDARD and k not in out:
                out[k] = v if isinstance(v, str | int | float | bool) or v is None else str(v)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, ensure_ascii=False)


LOG_FORMATS = ("text", "json")


def configure(*, level: str, fmt: str, text_format: str, context: dict[str, str]) -> None:
    """Set up the root logger for the command line: `fmt` is ``text`` (`text_format`) or ``json``
    (with `context`, which may be filled in later: the formatter reads it per record)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(context) if fmt == "json" else logging.Formatter(text_format))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
