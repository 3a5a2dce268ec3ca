"""The chaos runner: its own broker, N processor instances of tests/apps/chaos.py as real processes, a
paced workload, and a seeded schedule of faults — SIGKILL, SIGKILL with the state dir deleted, a
freeze longer than the session timeout, an instance kept down until its partitions move, and broker
restarts (clean and SIGKILL). After the schedule it lets the outputs settle, stops every instance with
SIGTERM and hands everything to the verifier (verify.py). Every wait has a deadline.

    python -m tests.chaos.runner [--profile short|long] [--seed N] [--dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from processor._engine.routing import partition_for_key
from tests.chaos import verify
from tests.chaos.broker import OwnBroker, free_port_pair
from tests.chaos.profiles import PROFILES, Profile, faults_from_env, seed_from_env
from tests.chaos.report import NOTABLE, Exit, Fault, Result, fmt, owned_at_stop
from tests.chaos.workload import CLIENT_LOG, OutputObserver, Topics, Workload, spread_keys
from tests.e2e.harness import ProcessorProcess
from tests.kafka_support import Kafka, _warm

SIGTERM_BOUND = 60.0   # how long a clean stop may take
MAX_RESTARTS = 10      # restarts of an instance that exited on its own, before giving up on it


class ChaosRun:
    """One run of a profile with one seed, in `work` (broker data, state dirs, logs)."""

    def __init__(self, profile: Profile, seed: int, work: Path, *, port: int | None = None,
                 say: Callable[[str], None] | None = None) -> None:
        self.profile, self.seed, self.work = profile, seed, work
        self.rng = random.Random(seed)
        self.result = Result(profile, seed, work)
        self._say = say or (lambda s: print(s, flush=True))
        self.broker = OwnBroker(work / "kafka", port or free_port_pair(int(os.environ.get("CHAOS_KAFKA_PORT", 19292))))
        self.broker_up = False
        self.app = "chaos"
        P = profile.partitions
        self.topics = Topics(counts="chaos-counts", sleeps="chaos-sleeps", asks="chaos-asks", output="chaos-out",
                             partitions=P)
        self.env = {"CHAOS_APP": self.app, "CHAOS_COUNTS": self.topics.counts, "CHAOS_SLEEPS": self.topics.sleeps,
                    "CHAOS_ASKS": self.topics.asks, "CHAOS_OUTPUT": self.topics.output,
                    # SIGABRT of a hung instance then writes every thread's Python stack to its log.
                    "PYTHONFAULTHANDLER": "1"}
        self.instances = [ProcessorProcess(spec="tests.apps.chaos:app", bootstrap=self.broker.bootstrap,
                                           state_dir=work / f"state-i{n}", instance_id=f"i{n}", env=self.env,
                                           log_dir=work / "logs")
                          for n in range(1, profile.instances + 1)]
        self.result.instances = self.instances
        self._killed: set[str] = set()   # instances we took down on purpose (not yet restarted)
        self._restarts: Counter[str] = Counter()
        self._restart_after_broker: set[str] = set()  # exited while the broker was away
        self._log_cut: dict[str, int] = {}  # length of each instance's log when SIGTERM was sent
        self._who: dict[int, str] = {}  # pid -> "<instance>#<life>", to name who committed an output
        self.workload: Workload | None = None
        self.observer: OutputObserver | None = None

    def say(self, msg: str) -> None:
        self._say(f"[{time.time() - self.result.started:7.1f}s] {msg}")

    # -- the run ---------------------------------------------------------------------------------

    def run(self) -> Result:
        self.say(f"chaos seed {self.seed} (PROCESSOR_CHAOS_SEED={self.seed} replays it), profile "
                 f"{self.profile.name}: {dict(self.profile.faults)}; work dir {self.work}")
        (self.work / "logs").mkdir(parents=True, exist_ok=True)
        client_log = logging.FileHandler(self.work / "logs" / "clients.log")
        client_log.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        CLIENT_LOG.addHandler(client_log)
        try:
            self._setup()
            if self._wait_flowing(time.time(), "the first outputs"):
                self._schedule()
            self._settle()
            self._stop_all()
            self._verify()
        finally:
            self._teardown()
            self.result.finished = time.time()
            CLIENT_LOG.removeHandler(client_log)
            client_log.close()
        return self.result

    def _setup(self) -> None:
        for _ in range(3):  # another suite may grab the same free port between our check and its start
            try:
                took = self.broker.start()
                break
            except RuntimeError as e:
                if "is taken" not in str(e):
                    raise
                self.broker = OwnBroker(self.broker.work, free_port_pair(self.broker.port + 2))
                for p in self.instances:
                    p.bootstrap = self.broker.bootstrap
        else:
            raise RuntimeError("no free port for the chaos broker after 3 tries")
        self.broker_up = True
        self.say(f"chaos broker ready on {self.broker.bootstrap} in {took:.1f}s")
        kafka = _warm(Kafka(bootstrap=self.broker.bootstrap, origin="chaos"))
        for t in (self.topics.counts, self.topics.sleeps, self.topics.asks, self.topics.output):
            kafka.create_topic(t, self.profile.partitions)
        first, *rest = self.instances
        self._launch(first).wait_ready(120)  # the first one creates the internal topics; the rest join
        for p in rest:
            self._launch(p)
        for p in rest:
            p.wait_ready(120)
        self.say(f"{len(self.instances)} instances ready")
        P = self.profile.partitions
        keys, callees = spread_keys("c", self.profile.keys, P), spread_keys("b", self.profile.callees, P)
        self.observer = OutputObserver(self.broker.bootstrap, self.topics.output, P)
        self.observer.start()
        cap = self.profile.budget + self.profile.fault_count * (self.profile.recover_timeout + 30)
        self.workload = Workload(self.broker.bootstrap, self.topics, self.profile.rates, self.seed + 1,
                                 keys=keys, callees=callees, cap_seconds=cap)
        self.workload.start()

    def _schedule(self) -> None:
        kinds = [k for k, n in self.profile.faults.items() for _ in range(n)]
        self.rng.shuffle(kinds)
        deadline = time.monotonic() + self.profile.budget
        for n, kind in enumerate(kinds, 1):
            if time.monotonic() > deadline:
                self.result.verdict.fail(f"schedule: {len(kinds) - n + 1} faults not injected: the "
                                         f"{self.profile.budget:.0f}s budget ran out (slow recoveries)")
                return
            self._pause(self.rng.uniform(*self.profile.pause))
            target = "broker" if kind.startswith("broker") else self.rng.choice(self.instances).instance_id
            fault = Fault(n=n, kind=kind, target=target)
            self.result.faults.append(fault)
            getattr(self, f"_inject_{kind}")(fault)
            ok = self._wait_flowing(fault.at, f"recovery from fault #{n} ({kind} {target})", fault)
            held = f"held {fault.held:.1f}s, " if fault.held else ""
            self.say(f"fault #{n}/{len(kinds)} {kind} {target}: {held}failover "
                     f"{fmt(fault.failover)}, recovery {fmt(fault.recovery)} (slowest p{fault.slowest})")
            if not ok:
                return  # a hang: stop injecting; the settle, stop and verify steps still report

    # -- faults ----------------------------------------------------------------------------------

    def _instance(self, fault: Fault) -> ProcessorProcess:
        return next(p for p in self.instances if p.instance_id == fault.target)

    def _kill(self, p: ProcessorProcess) -> None:
        self._watch()  # an exit of its own just before our SIGKILL must still count
        self._killed.add(p.instance_id)
        if p.running():
            p.kill()

    def _launch(self, p: ProcessorProcess) -> ProcessorProcess:
        p.start()
        assert p.pid is not None
        self._who[p.pid] = f"{p.instance_id}#{p.runs}"
        return p

    def _restart(self, p: ProcessorProcess) -> None:
        self._killed.discard(p.instance_id)
        self._launch(p)

    def _inject_kill(self, fault: Fault) -> None:
        p = self._instance(fault)
        fault.at = time.time()
        self._kill(p)
        self._restart(p)
        fault.ended = time.time()

    def _inject_kill_wipe(self, fault: Fault) -> None:
        p = self._instance(fault)
        fault.at = time.time()
        self._kill(p)
        shutil.rmtree(p.state_dir, ignore_errors=True)
        self._restart(p)
        fault.ended = time.time()

    def _inject_down(self, fault: Fault) -> None:
        p = self._instance(fault)
        fault.held = self.rng.uniform(*self.profile.down)
        fault.at = time.time()
        self._kill(p)
        self._pause(fault.held)
        self._restart(p)
        fault.ended = time.time()

    def _inject_freeze(self, fault: Fault) -> None:
        p = self._instance(fault)
        fault.held = self.rng.uniform(*self.profile.freeze)
        if not p.running():  # it exited on its own (already recorded): freeze it once it is back
            self._watch()
        fault.at = time.time()
        if p.running():
            p.freeze()
            self._pause(fault.held)
            p.thaw()
        fault.ended = time.time()

    def _inject_broker_stop(self, fault: Fault) -> None:
        self._broker_outage(fault, self.broker.stop)

    def _inject_broker_kill(self, fault: Fault) -> None:
        self._broker_outage(fault, self.broker.kill)

    def _broker_outage(self, fault: Fault, take_down: Callable[[], None]) -> None:
        outage = self.rng.uniform(*self.profile.outage)
        fault.at = time.time()
        self.broker_up = False
        take_down()
        self._pause(max(0.0, fault.at + outage - time.time()))
        took = self.broker.start()
        self.broker_up = True
        fault.ended = time.time()
        fault.held = fault.ended - fault.at
        self.say(f"broker back after {fault.held:.1f}s (start took {took:.1f}s)")

    # -- waiting and watching --------------------------------------------------------------------

    def _watch(self) -> None:
        """Note every instance that exited without being killed (a violation) and restart it, as a
        supervisor would, so the run goes on and finds more."""
        for p in self.instances:
            if p.instance_id in self._killed or p.proc is None or p.running():
                continue
            code = p.proc.returncode
            self.result.unexpected_exits.append(Exit(instance=p.instance_id, run=p.runs, code=code, at=time.time(),
                                                     log=p.log_path))
            last = p.log().strip().splitlines()[-1:] or ["(empty log)"]
            self.say(f"!! {p.instance_id} (run {p.runs}) exited by itself with {code}: {last[0][:200]}")
            if self._restarts[p.instance_id] >= MAX_RESTARTS:
                self._killed.add(p.instance_id)  # leave it down; the verdict will say so
                self.say(f"!! {p.instance_id} exited {MAX_RESTARTS} times; not restarting it again")
            elif self.broker_up:
                self._restarts[p.instance_id] += 1
                self._launch(p)
            else:
                self._killed.add(p.instance_id)
                self._restart_after_broker.add(p.instance_id)

    def _pause(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(0.2, left))
            self._watch()
        if self.broker_up and self._restart_after_broker:
            for p in self.instances:
                if p.instance_id in self._restart_after_broker:
                    self._restarts[p.instance_id] += 1
                    self._restart(p)
            self._restart_after_broker.clear()

    def _wait(self, cond: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                return False
            self._pause(0.2)
        return True

    def _wait_flowing(self, since: float, what: str, fault: Fault | None = None) -> bool:
        """Wait until every partition emitted a counter output of an input produced after `since`."""
        assert self.observer is not None
        obs = self.observer
        ok = self._wait(lambda: all(a is not None for a in obs.flowing_since(since).values()),
                        self.profile.recover_timeout)
        arrivals = obs.flowing_since(since)
        if not ok:
            stuck = sorted(p for p, a in arrivals.items() if a is None)
            self.result.verdict.fail(f"liveness: no outputs on partitions {stuck} for inputs after {what} within "
                                     f"{self.profile.recover_timeout:.0f}s (a hang)")
            return False
        if fault is not None:
            last = max(arrivals.items(), key=lambda kv: kv[1] or 0.0)
            fault.slowest = last[0]
            fault.failover = (last[1] or 0.0) - fault.at
            fault.recovery = max(0.0, (last[1] or 0.0) - fault.ended)
        return True

    # -- the end ---------------------------------------------------------------------------------

    def _settle(self) -> None:
        assert self.workload is not None and self.observer is not None
        self.workload.finish()
        w, obs = self.workload, self.observer
        with w.lock:
            want = set().union(*w.delivered.values())
            sent_by_kind = {k: len(v) for k, v in w.delivered.items()}
            self.result.warnings.extend(w.errors[:5])
        self.result.workload = (f"(produced {w.sent}, delivered {sent_by_kind}; observer saw {obs.count()} outputs"
                                f" before the stop)")
        # After a hang was already seen, waiting the full settle time only delays the report.
        timeout = self.profile.settle_timeout if not self.result.violations else 30.0
        self.say(f"workload stopped: {sent_by_kind}; waiting up to {timeout:.0f}s for every input's output")
        if not self._wait(lambda: obs.seen(want) == want, timeout):
            missing = sorted(want - obs.seen(want))
            self.result.verdict.fail(f"liveness: {len(missing)} inputs still without output "
                                     f"{timeout:.0f}s after the workload stopped", missing)
        self.result.workload = (f"(produced {w.sent}, delivered {sent_by_kind}; observer saw {obs.count()} outputs)")

    def _stop_all(self) -> None:
        self._watch()
        alive = [p for p in self.instances if p.running()]
        # Ownership at the stop is read from the logs up to here: the SIGTERM revokes everything.
        self._log_cut = {p.instance_id: len(p.log()) for p in self.instances}
        for p in alive:
            assert p.proc is not None
            p.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + SIGTERM_BOUND
        for p in alive:
            assert p.proc is not None
            while p.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            code = p.proc.poll()
            self.result.sigterm[p.instance_id] = code
            if code is None:
                self.result.verdict.fail(f"shutdown: {p.instance_id} still running {SIGTERM_BOUND:.0f}s after SIGTERM "
                                         f"(sent SIGABRT: its threads' Python stacks are in {p.log_path.name})")
                p.proc.send_signal(signal.SIGABRT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.proc.wait(timeout=15)
                p.ensure_dead()
            elif code != 0:
                self.result.verdict.fail(f"shutdown: {p.instance_id} exited {code} on SIGTERM",
                                         p.log().splitlines()[-5:])
        for p in self.instances:
            if p.instance_id not in self.result.sigterm:
                self.result.sigterm[p.instance_id] = None
                self.result.verdict.fail(f"shutdown: {p.instance_id} was not running at the end")
        self.say(f"instances stopped: {self.result.sigterm}")

    def _verify(self) -> None:
        v, t, P, bs = self.result.verdict, self.topics, self.profile.partitions, self.broker.bootstrap
        counts = [(k, e) for _, _, k, e in verify.decode(verify.read_topic(bs, t.counts, P))]
        sleeps = [e for *_, e in verify.decode(verify.read_topic(bs, t.sleeps, P))]
        asks = [e for *_, e in verify.decode(verify.read_topic(bs, t.asks, P))]
        outputs = [verify.Out(partition=p, offset=o, value={**e, "by": self._who.get(e.get("pid", 0), "?")})
                   for p, o, _, e in verify.decode(verify.read_topic(bs, t.output, P))]
        checked = verify.check_outputs(counts=counts, sleeps=sleeps, asks=asks, outputs=outputs, partitions=P)
        v.violations.extend(checked.violations)
        v.duplicates, v.losses, v.phantoms, v.inputs = (checked.duplicates, checked.losses, checked.phantoms,
                                                        checked.inputs)
        assert self.workload is not None
        on_topic = {str(e["id"]) for _, e in counts} | {str(e["id"]) for e in sleeps} | {str(e["id"]) for e in asks}
        gone = sorted(set().union(*self.workload.delivered.values()) - on_topic)
        if gone:
            v.fail(f"broker: {len(gone)} acknowledged input records are not on the input topics", gone)

        owned: dict[int, str] = {}
        for p in self.instances:
            mine = owned_at_stop(p.log()[:self._log_cut.get(p.instance_id, 0)])
            clash = sorted(q for q in mine if q in owned)
            if clash:
                v.fail(f"state: partitions {clash} owned at the stop by {p.instance_id} and also by "
                       f"{sorted({owned[q] for q in clash})} (by their logs); reading the first")
            owned |= {q: p.instance_id for q in mine if q not in owned}
        # The final state as the changelog holds it (what any next owner restores), not the instances'
        # stores: a rebalance at the stop may have left a partition mid-restore in its last owner's store.
        state, rows = verify.materialize_state(bs, self.app, P, self.work / "materialized")
        verify.check_state(v, counts=counts, asks=asks, state=state, partitions=P,
                           owned={q: "from the changelog" for q in range(P)})
        verify.check_invocations(v, rows)
        self._explain_losses(outputs, sleeps, asks, owned)

        self.result.lag = verify.unconsumed(bs, self.app, [t.counts, t.sleeps, t.asks, f"{self.app}.inbox"], P)
        if self.result.lag:
            v.fail(f"lag: {sum(self.result.lag.values())} committed input/inbox records after the group's "
                   f"committed offsets", [f"{k}: {n}" for k, n in sorted(self.result.lag.items())])
        for e in self.result.unexpected_exits:
            tail = [ln for ln in e.log.read_text(errors="replace").splitlines() if NOTABLE.search(ln)][-3:]
            v.fail(f"exit: {e.instance} (run {e.run}, {e.log.name}) exited with {e.code} without being killed",
                   tail)
        if self.observer is not None:
            self.result.warnings.extend(self.observer.errors[:5])

    def _explain_losses(self, outputs: list[verify.Out], sleeps: list[dict[str, object]],
                        asks: list[dict[str, object]], owned: dict[int, str]) -> None:
        """For sleepers and call chains without output (keyed by their id): where their invocation row
        is — in the final owner's store, only in another instance's stale copy, or nowhere."""
        done = {str(o.value.get("id")) for o in outputs}
        lost = sorted(str(e["id"]) for e in [*sleeps, *asks] if str(e["id"]) not in done)[:verify.EXAMPLES]
        P = self.profile.partitions
        lines = []
        for ev_id in lost:
            part = partition_for_key(ev_id.encode(), P)
            found = []
            for p in self.instances:
                _, rows = verify.read_owned_state(p.state_dir, self.app, {part})
                found += [f"{p.instance_id}: {r.status.value}" for _, r in rows if r.key == ev_id]
            lines.append(f"{ev_id} (partition {part}, final owner {owned.get(part)}): invocation row in "
                         f"{', '.join(found) or 'no store'}")
        if lines:
            self.result.verdict.fail("where the lost invocations are", lines)

    def _teardown(self) -> None:
        for p in self.instances:
            try:
                p.ensure_dead()
            except Exception as e:  # keep tearing down; the broker must go too
                self.result.warnings.append(f"teardown of {p.instance_id}: {e}")
        if self.workload is not None:
            self.workload.stop_event.set()
            self.workload.join(timeout=10)
            with contextlib.suppress(AttributeError):  # closed already
                self.workload.close()
        if self.observer is not None:
            self.observer.stop()
        self.result.broker_log = self.broker.log_tail(15)
        try:
            self.broker.stop()
        except Exception as e:
            self.result.warnings.append(f"stopping the chaos broker: {e}")
            pid = self.broker.pid()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.chaos.runner", description=__doc__.splitlines()[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), default=os.environ.get("PROCESSOR_CHAOS", "short"))
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--dir", type=Path, default=None, help="work dir (default: a new temp dir, kept)")
    args = ap.parse_args(argv)
    work = args.dir or Path(tempfile.mkdtemp(prefix="chaos-"))
    seed = args.seed if args.seed is not None else seed_from_env()
    result = ChaosRun(faults_from_env(PROFILES[args.profile]), seed, work).run()
    print(result.fault_log())
    print(result.summary())
    if result.violations:
        print(result.diagnostics())
    return 1 if result.violations else 0


if __name__ == "__main__":
    sys.exit(main())
