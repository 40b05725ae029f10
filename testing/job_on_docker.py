"""Runs a rendered Kubernetes Job's pod with Docker: the Job's spec, checked end to end.

Kubernetes cannot run on the test machines; Docker can. `docker_run_args`
turns one of the Job's containers (image, command, args, env, limits, securityContext,
volume mounts) into a `docker run` command line, and `run_pod` runs the pod as the kubelet
would: the init containers one after the other, then every container at once, each emptyDir
a host folder open to all as an emptyDir is (0777), or a size-limited tmpfs owned by the
container's user when it is the container's only writable place (`work`). `secretKeyRef`
entries are resolved here from the secrets backend, as the kubelet would from the model's
Secret, and passed by name only (`-e NAME` with the value in the child's environment), so no
value appears in the command line or a process listing.

The stand-ins for what a cluster gives: the flow container (`prefect-job`) gets the host's
network (the pod network reaching the Prefect API) and the host folders of the outputs
storage (a bucket in production); every other container gets `--network none`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
_MEMORY_FACTORS = {
    None: 1,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
}
SecretResolver = Callable[[str, str], str]


def cpu_cores(quantity: str) -> str:
    """ "2" -> "2", "500m" -> "0.5": Docker's --cpus."""
    match = _QUANTITY.match(str(quantity))
    if not match or match.group(2) not in (None, "m"):
        raise ValueError(f"not a Kubernetes CPU quantity: {quantity!r} (e.g. '2' or '500m')")
    number = float(match.group(1)) / (1000 if match.group(2) == "m" else 1)
    return f"{number:g}"


def memory_bytes(quantity: str) -> int:
    """ "5120Mi" -> 5368709120: Docker's --memory, in bytes."""
    match = _QUANTITY.match(str(quantity))
    if not match or match.group(2) == "m":
        raise ValueError(f"not a Kubernetes memory quantity: {quantity!r} (e.g. '4Gi')")
    return int(float(match.group(1)) * _MEMORY_FACTORS[match.group(2)])


def pod_spec(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]


def job_container(job: dict[str, Any], name: str = "prefect-job") -> dict[str, Any]:
    """The Job's container called `name` (the flow's, `prefect-job`, by default)."""
    for container in pod_spec(job)["containers"] + pod_spec(job).get("initContainers", []):
        if container["name"] == name:
            return container
    raise KeyError(f"the Job has no container {name!r}")


def container_env(
    container: dict[str, Any], resolve_secret: SecretResolver
) -> tuple[dict[str, str], set[str]]:
    """(environment, names of the entries that are secrets)."""
    env: dict[str, str] = {}
    secrets: set[str] = set()
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
            continue
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref is None:
            raise ValueError(
                f"env {entry['name']!r} uses a valueFrom other than secretKeyRef: not runnable"
                " with Docker"
            )
        env[entry["name"]] = resolve_secret(ref["name"], ref["key"])
        secrets.add(entry["name"])
    return env, secrets


def security_flags(context: dict[str, Any]) -> list[str]:
    """A container's securityContext as `docker run` flags (RuntimeDefault seccomp is Docker's
    own)."""
    flags: list[str] = []
    if "runAsUser" in context:
        flags += [
            "--user",
            f"{context['runAsUser']}:{context.get('runAsGroup', context['runAsUser'])}",
        ]
    if context.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    for capability in context.get("capabilities", {}).get("drop", []):
        flags += ["--cap-drop", capability]
    for capability in context.get("capabilities", {}).get("add", []):
        flags += ["--cap-add", capability]
    if context.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    seccomp = context.get("seccompProfile", {}).get("type")
    if seccomp not in (None, "RuntimeDefault"):
        raise ValueError(f"seccompProfile {seccomp!r}: not runnable with Docker here")
    return flags


def volume_flags(
    container: dict[str, Any], volumes: dict[str, dict[str, Any]], folders: dict[str, Path]
) -> list[str]:
    """Each mount: an emptyDir in `folders` as a bind (`:ro` when readOnly), else a tmpfs of the
    emptyDir's sizeLimit owned by the container's user (its private work folder)."""
    flags: list[str] = []
    user = container.get("securityContext", {}).get("runAsUser", 0)
    for mount in container.get("volumeMounts", []):
        name, path = mount["name"], mount["mountPath"]
        if name in folders:
            mode = "ro" if mount.get("readOnly") else "rw"
            flags += ["--volume", f"{folders[name]}:{path}:{mode}"]
            continue
        empty_dir = volumes[name].get("emptyDir")
        if empty_dir is None:
            raise ValueError(f"volume {name!r} is not an emptyDir: not runnable with Docker here")
        size = memory_bytes(empty_dir.get("sizeLimit", "64Mi"))
        flags += ["--tmpfs", f"{path}:size={size},mode=0700,uid={user},gid={user}"]
    return flags


def docker_run_args(
    job: dict[str, Any],
    resolve_secret: SecretResolver,
    name: str | None = None,
    container_name: str = "prefect-job",
    folders: dict[str, Path] | None = None,
    network: str | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The `docker run` argv of one of the Job's containers and the environment to start it with.

    Every variable is passed as `-e NAME` (value taken from the returned
    environment), so values, secret or not, never sit in the argv.
    """
    container = job_container(job, container_name)
    env, _secrets = container_env(container, resolve_secret)
    limits = container.get("resources", {}).get("limits", {})
    argv = ["docker", "run", "--rm"]
    if name:
        argv += ["--name", name]
    if network:
        argv += ["--network", network]
    if "cpu" in limits:
        argv += ["--cpus", cpu_cores(limits["cpu"])]
    if "memory" in limits:
        memory = str(memory_bytes(limits["memory"]))
        argv += ["--memory", memory, "--memory-swap", memory]  # no swap, as a pod has none
    argv += security_flags(container.get("securityContext", {}))
    if folders is not None:
        volumes = {v["name"]: v for v in pod_spec(job).get("volumes", [])}
        argv += volume_flags(container, volumes, folders)
    if container.get("workingDir"):
        argv += ["--workdir", container["workingDir"]]
    for key in env:
        argv += ["-e", key]
    command = container.get("command")
    if command:
        argv += ["--entrypoint", command[0]]
    argv.append(container["image"])
    argv += list(command[1:] if command else []) + list(container.get("args", []))
    return argv, env


SHARED_VOLUMES = ("exchange", "runtime")  # the emptyDirs more than one container mounts


@dataclass
class PodRun:
    """How each container of the pod ended: name -> (exit code, output)."""

    containers: dict[str, tuple[int, str]]

    def code(self, name: str) -> int:
        return self.containers[name][0]

    def output(self, name: str) -> str:
        return self.containers[name][1]


PLATFORM_CONTAINERS = ("prefect-job", "inputs")  # the platform's: the pod network's stand-in


class Pod:
    """A pod's spec (a Job's or a Deployment's template) on Docker: `start` runs the init
    containers in order, then every container at once, sharing host folders for the emptyDirs
    more than one container mounts; `wait` collects how they ended; `stop` removes them all.
    extra: more `docker run` flags for the platform's container (the stand-ins: host network,
    the outputs folder); every other container gets `--network none`."""

    def __init__(
        self,
        spec: dict[str, Any],
        resolve_secret: SecretResolver,
        name: str,
        extra: list[str] | None = None,
    ) -> None:
        self.job = {"spec": {"template": spec}}  # docker_run_args reads job.spec.template.spec
        self.resolve, self.name, self.extra = resolve_secret, name, extra or []
        self.docker = shutil.which("docker") or "docker"  # found on this PATH, not a container's
        self.folder = Path(tempfile.mkdtemp(prefix="cs-pod-"))
        self.folders = {volume: self.folder / volume for volume in SHARED_VOLUMES}
        for folder in self.folders.values():
            folder.mkdir()
            folder.chmod(0o777)  # an emptyDir's mode: every container's user may write
        self.ended: dict[str, tuple[int, str]] = {}
        self.started: dict[str, subprocess.Popen] = {}

    def _argv(self, container: str, network: str | None) -> tuple[list[str], dict[str, str]]:
        argv, env = docker_run_args(
            self.job, self.resolve, f"{self.name}-{container}", container, self.folders, network
        )
        argv[0] = self.docker
        return argv, env

    def start(self) -> bool:
        """Whether every init container succeeded (then the containers run)."""
        for init in pod_spec(self.job).get("initContainers", []):
            argv, env = self._argv(init["name"], "none")
            done = subprocess.run(argv, env=_env(env), capture_output=True, text=True, timeout=120)
            self.ended[init["name"]] = (done.returncode, done.stdout + done.stderr)
            if done.returncode:
                return False
        for container in pod_spec(self.job)["containers"]:
            platform = container["name"] in PLATFORM_CONTAINERS
            argv, env = self._argv(container["name"], None if platform else "none")
            if platform:
                argv = argv[:3] + self.extra + argv[3:]
            self.started[container["name"]] = subprocess.Popen(
                argv, env=_env(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        return True

    def wait_running(self, container: str, timeout: float = 60) -> str:
        """The Docker name of `container` once Docker runs it: `start` only launched
        `docker run`, which creates the container a moment later (a `docker exec` or a
        `docker rm` before then finds nothing)."""
        import time

        name = f"{self.name}-{container}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = subprocess.run(
                [self.docker, "inspect", "-f", "{{.State.Running}}", name],
                capture_output=True,
                text=True,
                check=False,
            )
            if state.stdout.strip() == "true":
                return name
            if self.started[container].poll() is not None:
                break
            time.sleep(0.2)
        raise TimeoutError(f"container {name} is not running after {timeout:g} s: {self.ended}")

    def wait(self, timeout: float) -> PodRun:
        for container, process in self.started.items():
            try:
                output, _ = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._remove(container)
                output, _ = process.communicate()
            self.ended[container] = (process.returncode, output)
        return PodRun(self.ended)

    def stop(self, keep: Path | None = None) -> PodRun:
        """Remove every container (what still runs is killed); keep: copy the shared folders."""
        for container in self.ended.keys() | self.started.keys():
            self._remove(container)
        for container, process in self.started.items():
            if container not in self.ended:
                try:  # a `docker run` that had not created its container yet outlived the rm
                    output, _ = process.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    self._remove(container)
                    output, _ = process.communicate()
                self.ended[container] = (process.returncode, output)
        if keep is not None:
            shutil.copytree(self.folder, keep, dirs_exist_ok=True)
        shutil.rmtree(self.folder, ignore_errors=True)
        return PodRun(self.ended)

    def _remove(self, container: str) -> None:
        subprocess.run(
            [self.docker, "rm", "-f", f"{self.name}-{container}"], capture_output=True, check=False
        )


def run_pod(
    job: dict[str, Any],
    resolve_secret: SecretResolver,
    name: str,
    flow_extra: list[str] | None = None,
    timeout: float = 300,
    keep: Path | None = None,
) -> PodRun:
    """The Job's pod on Docker (`Pod`), run until every container ends. keep: copy the shared
    folders there before they are removed (a test reads what the model saw)."""
    pod = Pod(job["spec"]["template"], resolve_secret, name, flow_extra)
    try:
        if pod.start():
            pod.wait(timeout)
    finally:
        result = pod.stop(keep)
    return result


def _env(env: dict[str, str]) -> dict[str, str]:
    """`docker`'s own environment (PATH, DOCKER_HOST) and the container's variables."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "DOCKER_HOST", "HOME")}
    return {**keep, **env}


def backend_resolver(owner: str, title: str) -> SecretResolver:
    """Resolve a model Secret's keys from the secrets backend (model scope first, then cluster),
    and the API login's Secret from this machine's login (what the operator put in it)."""
    from prefect_cs.infra.kubernetes import api_credential_secrets
    from prefect_cs.security.secrets import model_secret_env

    def resolve(secret_name: str, key: str) -> str:
        if (secret_name, key) == api_credential_secrets()["PREFECT_API_AUTH_STRING"]:
            return os.environ["PREFECT_API_AUTH_STRING"]
        return model_secret_env(owner, title, [key])[key]

    return resolve


def outputs_volumes() -> list[str]:
    """The host folders the flow container writes in a test (a bucket in production): the
    LocalFileSystem outputs block's folder and the kept undelivered results, bound at the same
    paths. Owned by the flow's user (root here) and closed to others."""
    from prefect.filesystems import LocalFileSystem
    from prefect_cs.core.blocks import load_outputs_storage
    from prefect_cs.core.settings import get_settings

    folders = [get_settings().undelivered_dir]
    storage = load_outputs_storage()
    if isinstance(storage, LocalFileSystem):
        folders.append(Path(storage.basepath))
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)
    return [f"{folder}:{folder}" for folder in folders]
