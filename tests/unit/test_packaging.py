"""The distribution exposes one top-level import, `processor`, so a user's own modules named like our
internal packages (state.py, timers.py, schemas.py) shadow nothing of ours."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.kafka_support import REPO

SHADOWS = ("state", "timers", "schemas")


def test_the_wheel_installs_only_the_processor_package(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"processor"}
    for inside in ("processor/state/store.py", "processor/timers/index.py", "processor/schemas/invocation.avsc",
                   "processor/schemas/history/invocation.v1.avsc", "processor/state/py.typed"):
        assert inside in names


def test_a_users_state_timers_and_schemas_modules_break_nothing(tmp_path: Path) -> None:
    for name in SHADOWS:
        (tmp_path / f"{name}.py").write_text(f"raise ImportError('the user\\'s own {name}.py was imported')\n")
    (tmp_path / "app.py").write_text(
        "import processor as p\n"
        "app = p.App('shadowed')\n"
        "counter = app.virtual_object('counter')\n"
        "@counter.handler()\n"
        "async def add(ctx: p.ObjectContext, n: int) -> int:\n"
        "    v = (await ctx.get('n') or 0) + n\n"
        "    ctx.set('n', v)\n"
        "    return v\n"
        "app.subscribe('numbers', add)\n")
    # the user's directory first on sys.path, as when they run their own scripts from it
    probe = ("import sys; sys.path.insert(0, '.'); import app; "
             "import processor._engine.engine, processor._cli, processor._inspect, processor.state.store; "
             "print('ok')")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    cli = subprocess.run([sys.executable, "-m", "processor", "invocations", "--app", "shadowed", "--offline",
                          "--state-dir", str(tmp_path / "absent"), "--json"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert "the user's own" not in cli.stderr
    assert "Traceback" not in cli.stderr
