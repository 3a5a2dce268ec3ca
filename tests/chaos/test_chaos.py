"""The chaos suite: N processor instances under SIGKILLs, freezes, long downtimes and broker restarts
keep every output exactly once, the final state right, the group caught up and every instance alive.
PROCESSOR_CHAOS=long selects the long profile; PROCESSOR_CHAOS_SEED replays a run (docs/chaos.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.runner import ChaosRun, profile_from_env, seed_from_env

pytestmark = pytest.mark.chaos


def test_outputs_stay_exactly_once_and_instances_live_under_random_faults(tmp_path: Path) -> None:
    result = ChaosRun(profile_from_env(), seed_from_env(), tmp_path).run()
    print(result.fault_log())
    print(result.summary())
    if result.violations:
        print(result.diagnostics())
    assert result.faults, "no fault was injected"
    assert not result.violations, (f"chaos seed {result.seed}: {len(result.violations)} violations "
                                   f"(summary and instance logs above):\n" + "\n".join(result.violations))
