"""The import surface users get (`import processor as p`) is exactly this list (STYLE habit 1)."""

from __future__ import annotations

import pkgutil

import processor

PUBLIC = sorted([
    "App", "AvroSerde", "BytesSerde", "CatchUp", "Client", "ConfigurationError", "Context", "DurableFuture",
    "DurablePromise", "HandlerRef", "InvocationCancelled", "InvocationKilled", "InvocationNotFound", "JsonSerde",
    "NondeterminismError",
    "ObjectContext", "ObjectDefinition", "ObjectSharedContext", "OnExhausted", "ProcessorError", "Rate", "RetryPolicy",
    "Serde",
    "SerdeError", "ServiceDefinition", "StepFailedError", "StepInfo", "SyncClient", "TerminalError", "WorkflowContext",
    "UnknownTopicError", "WorkflowDefinition", "WorkflowSharedContext", "current_step", "gather", "ref", "select",
])


def test_all_is_exactly_the_public_surface() -> None:
    assert sorted(processor.__all__) == PUBLIC
    assert len(processor.__all__) == len(set(processor.__all__))


def test_every_public_name_resolves() -> None:
    missing = [n for n in PUBLIC if not hasattr(processor, n)]
    assert not missing


# The lower layers, installed under the package (processor/state -> ../state and so on): importable so
# that the engine, the CLI and tests reach them, but not API (docs/architecture.md).
LAYERS = ["schemas", "state", "timers"]
# The testing kit is API of its own: `from processor.testing import TestRuntime` (docs/testing.md).
KITS = ["testing"]
TESTING = sorted(["Divergence", "Emitted", "JournalEntry", "NotFinished", "ReplayDivergence", "ReplayReport",
                  "TestRuntime", "replay"])


def test_every_submodule_of_processor_is_private_but_the_lower_layers_and_the_testing_kit() -> None:
    public = [m.name for m in pkgutil.iter_modules(processor.__path__)
              if not m.name.startswith("_")]
    assert sorted(public) == sorted(LAYERS + KITS), f"public modules besides the package itself: {public}"


def test_the_testing_kit_exports_exactly_its_surface() -> None:
    import processor.testing

    assert sorted(processor.testing.__all__) == TESTING
    assert all(hasattr(processor.testing, n) for n in TESTING)


def test_the_error_tree_has_one_root() -> None:
    errors = [getattr(processor, n) for n in PUBLIC if n.endswith("Error")]
    assert all(issubclass(e, processor.ProcessorError) for e in errors)
    assert issubclass(processor.StepFailedError, processor.TerminalError)
    assert issubclass(processor.InvocationCancelled, processor.TerminalError)
    assert issubclass(processor.InvocationKilled, processor.TerminalError)
