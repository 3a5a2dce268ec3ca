"""The error tree.

    ProcessorError                 root of everything the processor raises at users
    ├── TerminalError              fails a step or invocation at once; never retried
    │   ├── StepFailedError        a step's retries are exhausted (raised in the handler)
    │   ├── InvocationCancelled    the invocation (or one it awaits) was cancelled
    │   └── InvocationKilled       the invocation was killed (no compensation ran)
    ├── NondeterminismError        replay diverged from the journal; the invocation is paused
    ├── ConfigurationError         the app or its topics are set up wrong; refuse to run
    └── SerdeError                 a value could not be serialized or deserialized

    _Abandon (BaseException)       engine control flow inside handler code: the invocation is being
                                   paused, dropped or suspended. ``except Exception`` cannot swallow it.
"""

from __future__ import annotations


class ProcessorError(Exception):
    """Root of the processor's errors."""


class TerminalError(ProcessorError):
    """Raise it to fail a step or an invocation without retrying.

    Inside ``ctx.run`` it fails the step (the handler sees it raised from ``await ctx.run``); escaping
    the handler, it fails the invocation, whose failure is recorded with its journal.
    """

    def __init__(self, message: str, *, error_type: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type or type(self).__name__


class StepFailedError(TerminalError):
    """A step failed on every attempt its RetryPolicy allowed."""


class InvocationCancelled(TerminalError):
    """Raised at an invocation's next durable await after ``Client.cancel``: catch it to compensate.
    ``Client.result``/``call`` of a cancelled invocation raise it too."""


class InvocationKilled(TerminalError):
    """``Client.result``/``call`` of an invocation stopped by ``Client.kill`` (and a call awaiting one)
    raise it: the invocation stopped where it was, with no compensation."""


_BY_FAILURE_TYPE: dict[str, type[TerminalError]] = {
    "Cancelled": InvocationCancelled,
    "Killed": InvocationKilled,
}


def terminal_error(error_type: str, message: str) -> TerminalError:
    """The error a recorded failure of `error_type` is raised as (to handlers and to Clients)."""
    return _BY_FAILURE_TYPE.get(error_type, TerminalError)(message, error_type=error_type)


class NondeterminismError(ProcessorError):
    """Replaying an invocation called a different action than its journal recorded at that position."""

    def __init__(self, *, invocation_id: str, seq: int, journaled: str, replayed: str) -> None:
        super().__init__(f"invocation {invocation_id} diverged from its journal at position {seq}:\n"
                         f"  journaled: {journaled}\n  replayed:  {replayed}")
        self.invocation_id = invocation_id
        self.seq = seq
        self.journaled = journaled
        self.replayed = replayed


class ConfigurationError(ProcessorError):
    """The app, its topics or the command line are set up in a way the processor cannot run."""


class UnknownTopicError(ProcessorError):
    """``ctx.emit`` named a topic that does not exist. Topics are never created by an emit; the attempt
    fails (and is retried as the invocation's retry policy says, so creating the topic lets it finish).
    Declare outputs with ``app.output(topic, partitions=N)`` to have them checked or created at start."""

    def __init__(self, topic: str) -> None:
        super().__init__(f"ctx.emit to topic {topic!r}: no such topic (topics are never auto-created: "
                         f"create it, or declare it with app.output({topic!r}, partitions=N))")
        self.topic = topic


class SerdeError(ProcessorError):
    """A value could not be serialized or deserialized."""


class _Abandon(BaseException):
    """Unwinds handler code when the engine stops driving an invocation (pause, drop, suspend)."""
