"""The chaos suite: N processor instances under SIGKILLs, freezes, long downtimes and broker restarts
keep every output exactly once, the final state right, the group caught up and every instance alive.
PROCESSOR_CHAOS=long selects the long profile, PROCESSOR_CHAOS_RUNS=3 runs it three times (each with
its own seed), PROCESSOR_CHAOS_SEED replays a run (docs/chaos.md)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.chaos.broker import free_port_pair
from tests.chaos.profiles import profile_from_env, seed_from_env
from tests.chaos.runner import ChaosRun

pytestmark = pytest.mark.chaos

RUNS = int(os.environ.get("PROCESSOR_CHAOS_RUNS", "1"))


@pytest.mark.parametrize("run", range(1, RUNS + 1), ids=lambda n: f"run{n}")
def test_outputs_stay_exactly_once_and_instances_live_under_random_faults(tmp_path: Path, run: int) -> None:
    if shutil.which("java") is None:
        pytest.skip("the chaos suite runs a broker of its own with deploy/kafka/broker.sh, which needs Java")
    # A broker port of its own per run: nothing left of an earlier run can reach this run's broker.
    port = free_port_pair(int(os.environ.get("CHAOS_KAFKA_PORT", 19292)) + 20 * (run - 1))
    result = ChaosRun(profile_from_env(), seed_from_env(), tmp_path, port=port).run()
    print(result.fault_log())
    print(result.summary())
    if result.violations:
        print(result.diagnostics())
    assert result.faults, "no fault was injected"
    assert not result.violations, (f"chaos run {run}, seed {result.seed}: {len(result.violations)} violations "
                                   f"(summary and instance logs above):\n" + "\n".join(result.violations))
