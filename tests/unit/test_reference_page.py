"""docs/reference.md lists every App option, every command-line flag and every environment variable the
code reads: adding one without documenting it fails here."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re

from processor._app import AppConfig, ObjectDefinition, ServiceDefinition, WorkflowDefinition
from processor._cli import build_parser
from tests.kafka_support import REPO

PAGE = (REPO / "docs" / "reference.md").read_text()
# Variables named in code as string literals (os.environ.get("X"), constants like FILE_ENV = "X").
_ENV_NAME = re.compile(r"""["'](PROCESSOR_[A-Z_]+|KAFKA_[A-Z_]+)["']""")


def _section(title: str) -> str:
    start = PAGE.index(title)
    end = PAGE.find("\n## ", start + 1)
    return PAGE[start:end if end > 0 else None]


def test_every_app_option_is_listed() -> None:
    options = _section("## App options")
    missing = [f.name for f in dataclasses.fields(AppConfig) if f"`{f.name}`" not in options]
    assert not missing, f"App options missing from docs/reference.md: {missing}"


def test_every_handler_option_is_listed() -> None:
    options = _section("## Handler options")
    decorators = (ServiceDefinition.handler, ObjectDefinition.handler, WorkflowDefinition.run,
                  WorkflowDefinition.handler)
    names = {n for d in decorators for n in inspect.signature(d).parameters if n != "self"}
    missing = sorted(n for n in names if f"`{n}`" not in options)
    assert names and not missing, f"handler options missing from docs/reference.md: {missing}"


def test_every_flag_of_every_command_is_listed() -> None:
    page = _section("## Command line")
    missing = []
    for action in build_parser()._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for command, sub in action.choices.items():
            if not re.search(rf"\b{command}\b", page):
                missing.append(command)
            for a in sub._actions:
                if a.help == argparse.SUPPRESS or not a.option_strings or "-h" in a.option_strings:
                    continue
                missing += [f"{command} {flag}" for flag in a.option_strings if f"`{flag}" not in page]
    assert not missing, f"missing from docs/reference.md: {missing}"


def test_every_environment_variable_the_code_reads_is_listed() -> None:
    names = set()
    for package in ("processor", "state", "timers", "schemas"):
        for path in (REPO / package).rglob("*.py"):
            names |= set(_ENV_NAME.findall(path.read_text()))
    names.discard("PROCESSOR_KAFKA_")  # the prefix: listed as PROCESSOR_KAFKA_<SETTING>
    env = _section("## Environment variables")
    missing = sorted(n for n in names if f"`{n}`" not in env)
    assert names and not missing, f"environment variables missing from docs/reference.md: {missing}"
    assert "`PROCESSOR_KAFKA_<SETTING>`" in env
