from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.e2e.harness import ProcessorProcess
from tests.kafka_support import Kafka


class Spawner:
    def __init__(self, kafka: Kafka, tmp: Path) -> None:
        self.kafka = kafka
        self.tmp = tmp
        self.procs: list[ProcessorProcess] = []

    def __call__(self, spec: str, env: dict[str, str], *, instance_id: str = "i1",
                 state_dir: Path | None = None, workers: int = 1, args: Sequence[str] = ()) -> ProcessorProcess:
        p = ProcessorProcess(spec=spec, bootstrap=self.kafka.bootstrap, state_dir=state_dir or self.tmp / "state",
                             instance_id=instance_id, env=env, log_dir=self.tmp, workers=workers, args=args)
        self.procs.append(p)
        return p


@pytest.fixture
def spawn(kafka: Kafka, tmp_path: Path) -> Iterator[Spawner]:
    s = Spawner(kafka, tmp_path)
    yield s
    for p in s.procs:
        p.ensure_dead()
