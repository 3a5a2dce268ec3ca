"""The deployment artifacts in ``deploy/``, checked offline: the Kubernetes manifests against the API
schemas that kubernetes-validate bundles (no cluster), the compose file's and the Dockerfile's shape,
and that what they pass to ``processor run`` — flags and environment — parses with the CLI's own parser
to what the deployment means. The image is built only where a Docker engine answers."""

from __future__ import annotations

import argparse
import importlib
import re
import shutil
import subprocess
import tomllib
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from processor._app import App
from processor._cli import STOP_BOUND_S, WORKERS_STOP_S, build_parser, load_app
from processor._workers import KILL_WAIT_S

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "deploy" / "compose" / "compose.yaml"
K8S = REPO / "deploy" / "k8s"
SECRET_EXAMPLE = K8S / "secret.example.yaml"

# Flags the manifests pass that `processor run` does not have yet (none now: --admin-port, which the
# StatefulSet's probes need, arrived with the admin endpoint). test_pending_flags_are_still_missing
# fails once one exists: then drop it here.
PENDING_FLAGS: frozenset[str] = frozenset()

# The oldest Kubernetes minor the manifests must still be valid for, and the newest bundled one.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())

SECRET_WORDS = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL|PRIVATE|(^|_)KEY($|_)", re.IGNORECASE)


# -- helpers ---------------------------------------------------------------------------------------

def run_parser() -> argparse.ArgumentParser:
    """The `processor run` subcommand's parser (read from the CLI, never copied)."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser: argparse.ArgumentParser = sub.choices["run"]
    return parser


def run_flags() -> set[str]:
    return {opt for action in run_parser()._actions for opt in action.option_strings if opt.startswith("--")}


def flags_of(args: Sequence[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in args if a.startswith("--")}


def without_pending(args: Sequence[str]) -> list[str]:
    """`args` less the pending flags and their values (`--flag=value` or `--flag value`)."""
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
        elif a in PENDING_FLAGS:
            skip = True
        elif a.split("=", 1)[0] not in PENDING_FLAGS:
            out.append(a)
    return out


def flag_value(args: Sequence[str], flag: str) -> str:
    for i, a in enumerate(args):
        if a == flag:
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    raise AssertionError(f"{flag} not in {list(args)}")


def parse_run(args: Sequence[str], env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """Parse `processor run ARGS` as the CLI would in a process whose environment is `env` (the
    parser reads its defaults from the environment when it is built)."""
    with monkeypatch.context() as m:
        for name in ("KAFKA_BOOTSTRAP_SERVERS", "PROCESSOR_LOG_LEVEL", "PROCESSOR_WORKERS"):
            m.delenv(name, raising=False)
        for name, value in env.items():
            m.setenv(name, value)
        return build_parser().parse_args(["run", *without_pending(args)])


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def duration_s(text: str) -> float:
    """A compose duration such as `60s`, `1m30s` or `1m`."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def worst_stop_s(app: App) -> float:
    """How long `processor run` may take after SIGTERM: a commit in flight (bounded by the
    transaction timeout) plus the stop bound, the supervisor's for several workers (it waits for
    them, then for the kernel after SIGKILL)."""
    stop_bound = max(STOP_BOUND_S, WORKERS_STOP_S + KILL_WAIT_S)
    return app.config.transaction_timeout.total_seconds() + stop_bound


# -- Dockerfile ------------------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def final_stage() -> list[tuple[str, str]]:
    ins = dockerfile_instructions()
    last_from = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    return ins[last_from:]


def exec_form(instruction: str) -> list[str]:
    (args,) = [a for word, a in final_stage() if word == instruction]
    parsed = yaml.safe_load(args)  # a JSON array is YAML too
    assert isinstance(parsed, list), f"{instruction} must be in exec form (a JSON array): {args}"
    return [str(a) for a in parsed]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in final_stage():
        if word == "ENV":
            env.update(pair.split("=", 1) for pair in args.split())
    return env


def image_uid() -> int:
    users = [a for word, a in final_stage() if word == "USER"]
    assert users, "the image must not run as root: no USER in the final stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), f"USER {users[-1]}: numeric, so Kubernetes' runAsNonRoot can check it"
    return int(uid)


def test_dockerfile_runs_processor_run_as_a_numeric_non_root_user() -> None:
    assert image_uid() != 0
    entrypoint = exec_form("ENTRYPOINT")
    i = entrypoint.index("processor")
    assert entrypoint[i:i + 2] == ["processor", "run"], entrypoint
    # PID 1 must pass SIGTERM on: tini before the command.
    assert entrypoint[0] == "tini", entrypoint


def test_dockerfile_bases_on_python_slim_of_a_supported_version() -> None:
    ins = dockerfile_instructions()
    args = dict(a.split("=", 1) for word, a in ins if word == "ARG" and "=" in a)
    bases = [a.split()[0].replace("${PYTHON_VERSION}", args["PYTHON_VERSION"]) for word, a in ins if word == "FROM"]
    assert bases and all(re.fullmatch(r"python:3\.\d+-slim(-\w+)?", b) for b in bases), bases
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(x) for x in requires.removeprefix(">=").split("."))
    assert tuple(int(x) for x in args["PYTHON_VERSION"].split(".")) >= minimum


def test_dockerfile_copies_every_package_and_the_context_lets_them_in() -> None:
    """A package added to pyproject and not to the image would fail only at `docker build` (or at
    import in the container); a COPY source .dockerignore keeps out fails the build."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    sources = set()
    for word, args in dockerfile_instructions():
        if word == "COPY" and not args.startswith("--from"):
            sources.update(p.rstrip("/") for p in args.split()[:-1] if not p.startswith("--"))
    assert packages <= sources, f"packages not copied into the image: {packages - sources}"
    assert {"pyproject.toml", "README.md"} <= sources  # the build reads both (README: the long description)
    allowed = {line[1:].strip() for line in DOCKERIGNORE.read_text().splitlines() if line.startswith("!")}
    assert "*" in DOCKERIGNORE.read_text().splitlines(), ".dockerignore should let in only what the image needs"
    for src in sources:
        assert (REPO / src).exists(), f"COPY {src}: no such file in the repository"
        assert src in allowed, f"COPY {src}: .dockerignore keeps it out of the build context"


def test_dockerfile_default_command_parses_and_names_a_loadable_app(monkeypatch: pytest.MonkeyPatch) -> None:
    cmd = exec_form("CMD")
    assert flags_of(cmd) <= run_flags(), f"unknown flags: {flags_of(cmd) - run_flags()}"
    args = parse_run(cmd, image_env(), monkeypatch)
    assert args.workers == 1  # one engine per container unless told otherwise
    assert isinstance(load_app(args.app), App)
    assert any(word == "RUN" and args.state_dir in a and "chown" in a for word, a in final_stage()), \
        f"the image must create {args.state_dir} owned by its user (a fresh volume takes that ownership)"


def docker_engine() -> str | None:
    """Why there is no usable Docker engine, or None when there is one."""
    if shutil.which("docker") is None:
        return "no docker command on this machine"
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        return "no Docker engine answers `docker info`: " + (probe.stderr.strip().splitlines() or ["?"])[-1]
    return None


def test_image_builds_and_runs_processor_run() -> None:
    # The one skip the suite allows: building an image needs a Docker engine, which not every machine has.
    reason = docker_engine()
    if reason is not None:
        pytest.skip(f"Dockerfile not built: {reason}")
    tag = f"processor-test:{uuid.uuid4().hex[:12]}"
    try:
        subprocess.run(["docker", "build", "-q", "-f", str(DOCKERFILE), "-t", tag, str(REPO)],
                       check=True, timeout=1800)
        shown = subprocess.run(["docker", "run", "--rm", tag, "--help"], capture_output=True, text=True,
                               timeout=120, check=True)
        assert "--state-dir" in shown.stdout
        uid = subprocess.run(["docker", "run", "--rm", "--entrypoint", "id", tag, "-u"], capture_output=True,
                             text=True, timeout=120, check=True)
        assert uid.stdout.strip() == str(image_uid())
        script = "from processor._cli import load_app; print(load_app('examples.orders.app:app').name)"
        loaded = subprocess.run(["docker", "run", "--rm", "--entrypoint", "python", tag, "-c", script],
                                capture_output=True, text=True, timeout=120, check=True)
        assert loaded.stdout.strip() == "shop"
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=120)


# -- compose ---------------------------------------------------------------------------------------

def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def processor_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in doc["services"].items() if s.get("build", {}).get("dockerfile")}


def test_compose_runs_kraft_kafka_from_the_official_image() -> None:
    kafka = compose()["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}  # KRaft, one node
    assert not any("ZOOKEEPER" in k for k in env)
    for setting in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                    "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
        assert env[setting] == 1, f"{setting}: a single broker cannot hold more replicas"
    assert "healthcheck" in kafka


def test_compose_runs_three_processors_with_their_own_instance_ids_and_state(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = compose()
    services = processor_services(doc)
    assert len(services) == 3, sorted(services)
    advertised = doc["services"]["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    instance_ids, volumes = set(), set()
    for name, s in services.items():
        assert (COMPOSE.parent / s["build"]["context"] / s["build"]["dockerfile"]).resolve() == DOCKERFILE
        command = s["command"]
        assert flags_of(command) <= run_flags(), f"{name}: unknown flags {flags_of(command) - run_flags()}"
        args = parse_run(command, {k: str(v) for k, v in s["environment"].items()}, monkeypatch)
        assert isinstance(load_app(args.app), App)
        assert f"//{args.bootstrap_servers}" in advertised, f"{name}: {args.bootstrap_servers} is no Kafka listener"
        assert args.workers == 1
        assert args.instance_id, f"{name}: an instance id must be set (two instances must never share one)"
        instance_ids.add(args.instance_id)
        (mount,) = [v for v in s["volumes"] if v.split(":")[1] == args.state_dir]
        volume = mount.split(":")[0]
        assert volume in doc["volumes"], f"{name}: volume {volume} is not declared"
        volumes.add(volume)
        assert s["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        assert duration_s(s["stop_grace_period"]) > worst_stop_s(load_app(args.app))
    assert len(instance_ids) == 3, instance_ids
    assert len(volumes) == 3, volumes


def test_compose_creates_the_demo_app_topics_before_the_processors_start() -> None:
    module = importlib.import_module("examples.orders.app")
    topics = compose()["services"]["topics"]
    script = " ".join(topics["command"])
    for topic in [*module.app.bindings, module.OUTPUT_TOPIC]:
        assert re.search(rf"(^|\s){re.escape(topic)}(\s|;|$)", script), f"topic {topic} is not created"
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"


# -- Kubernetes ------------------------------------------------------------------------------------

def kustomization() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return doc


def k8s_resources() -> Iterator[dict[str, Any]]:
    for name in kustomization()["resources"]:
        yield from load_yaml_docs(K8S / name)


def only(kind: str) -> dict[str, Any]:
    (doc,) = [d for d in k8s_resources() if d["kind"] == kind]
    return doc


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    listed = set(kustomization()["resources"])
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == files - {SECRET_EXAMPLE.name}
    assert {d["kind"] for d in k8s_resources()} == {"ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget"}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"))
def test_manifest_is_valid_against_the_kubernetes_schema(path: str, version: str) -> None:
    docs = load_yaml_docs(K8S / path)
    assert docs
    for doc in docs:
        # strict: unknown fields (a misspelt or misplaced key) are errors, as `kubectl apply` makes them
        kubernetes_validate.validate(doc, version, strict=True)


def test_a_wrong_manifest_is_caught() -> None:
    """The validation above can fail: a misplaced field and a wrong type are both errors."""
    pdb = only("PodDisruptionBudget")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({**pdb, "spec": {**pdb["spec"], "maxUnavailabel": 1}}, K8S_VERSIONS[-1],
                                     strict=True)
    sts = only("StatefulSet")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({**sts, "spec": {**sts["spec"], "replicas": "three"}}, K8S_VERSIONS[-1],
                                     strict=True)


def container() -> dict[str, Any]:
    (c,) = only("StatefulSet")["spec"]["template"]["spec"]["containers"]
    assert isinstance(c, dict)
    return c


def pod_env(c: dict[str, Any], pod_name: str) -> dict[str, str]:
    """The container's environment as Kubernetes would build it (ConfigMap, then `env`), with the
    downward-API pod name filled in."""
    env: dict[str, str] = {}
    for source in c["envFrom"]:
        if "configMapRef" in source:
            assert source["configMapRef"]["name"] == only("ConfigMap")["metadata"]["name"]
            env.update(only("ConfigMap")["data"])
    for var in c["env"]:
        if var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[var["name"]] = pod_name
        else:
            env[var["name"]] = var["value"]
    return env


def expand(arg: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in container args."""
    return re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg)


def test_statefulset_args_and_environment_parse_to_one_instance_per_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    c = container()
    assert flags_of(c["args"]) <= run_flags() | PENDING_FLAGS, f"unknown flags: {flags_of(c['args']) - run_flags()}"
    env = pod_env(c, "processor-2")
    args = parse_run([expand(a, env) for a in c["args"]], env, monkeypatch)
    assert isinstance(load_app(args.app), App)
    assert args.instance_id == "processor-2"  # the stable pod name, from the downward API
    assert args.bootstrap_servers == only("ConfigMap")["data"]["KAFKA_BOOTSTRAP_SERVERS"]
    assert args.workers == 1
    assert args.workers <= float(c["resources"]["limits"]["cpu"]), "more engine processes than cores"


def test_statefulset_keeps_each_pods_state_dir_on_its_own_volume_claim() -> None:
    sts = only("StatefulSet")
    c = container()
    state_dir = flag_value(c["args"], "--state-dir")
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == state_dir]
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    assert mount["name"] in claims, f"{state_dir} is not on a volumeClaimTemplate"
    assert exec_form("CMD")[exec_form("CMD").index("--state-dir") + 1] == state_dir  # the dir the image owns


def test_statefulset_probes_call_the_admin_endpoint_on_its_port() -> None:
    c = container()
    port = flag_value(c["args"], "--admin-port")
    expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        command = c[probe]["exec"]["command"]
        urls = [u for part in command for u in re.findall(r"http://[\w.:]+/\w+", part)]
        assert urls == [f"http://127.0.0.1:{port}{path}"], (probe, command)
        assert c[probe]["timeoutSeconds"] >= 2  # a Python start on a throttled CPU takes a while


def test_pending_flags_are_still_missing() -> None:
    arrived = PENDING_FLAGS & run_flags()
    assert not arrived, f"`processor run` has {sorted(arrived)} now: remove it from PENDING_FLAGS"


def test_statefulset_terminates_gracefully_and_disrupts_one_pod_at_a_time() -> None:
    sts = only("StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    app = load_app(container()["args"][0])
    assert pod["terminationGracePeriodSeconds"] > worst_stop_s(app)
    pdb = only("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    labels = sts["spec"]["template"]["metadata"]["labels"]
    for selector in (pdb["spec"]["selector"]["matchLabels"], sts["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()


def test_statefulset_has_its_headless_service_resources_and_a_non_root_user() -> None:
    sts = only("StatefulSet")
    service = only("Service")
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    c = container()
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= c["resources"][kind].keys(), kind
    security = sts["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == image_uid()


def test_kafka_settings_come_from_a_configmap_and_credentials_from_a_secret() -> None:
    config = only("ConfigMap")["data"]
    secret_looking = [k for k in config if SECRET_WORDS.search(k)]
    assert not secret_looking, f"secrets belong in the Secret, not the ConfigMap: {secret_looking}"
    refs = [s["secretRef"] for s in container()["envFrom"] if "secretRef" in s]
    (example,) = load_yaml_docs(SECRET_EXAMPLE)
    assert example["kind"] == "Secret"
    assert refs == [{"name": example["metadata"]["name"], "optional": True}]  # a plaintext cluster needs none
