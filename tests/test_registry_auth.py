"""The image registry on 127.0.0.1:5000 refuses everyone without its login (issue 18, item 2).

Before, it had no auth: a model's install.sh with network read another model's
image and created `redteam-canary/*` repositories, and could as well have pushed
over a victim's tag. On the real engine and the real registry (started with
auth by infra/docker/start-engine.sh), these tests try what model code and
anonymous clients can: the registry API, `docker push` and `docker pull` with no
login, and from a container on the host's network, the way install.sh and
`internet: true` models reach loopback. Each must get 401 and leave nothing; the
platform's own push, with the `cs-registry` block's login, must succeed. The
login itself: root only, never on a command line, in a log or in the script's
output; rendered for Kubernetes as a pull Secret that the registry accepts.

Images here are tiny (`docker import` of a one-file tar), built in a second.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import tarfile
import uuid
from pathlib import Path

import httpx
import pytest
from prefect_cs.testing.docker_tier import (
    REGISTRY,
    REGISTRY_BLOCK,
    SCRIPTS,
    ensure_docker,
    registry_auth,
    registry_settings,
)

VICTIM = "cs-tests/victim"  # a repository the platform pushes; the attacks aim at it
# What the attack in the issue created, under a name of this run's: a repository left by an
# earlier run against an open registry can neither hide nor fake this run's outcome.
CANARY = f"redteam-canary/x-{uuid.uuid4().hex[:8]}"
CREDENTIALS = Path("/etc/prefect-cs/registry/credentials")


@pytest.fixture(scope="module")
def registry(platform):
    """The engine and the registry with auth, the login saved as the cs-registry block."""
    ensure_docker()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in registry_settings().items():
            mp.setenv(key, value)
        yield


def tiny_image(marker: str) -> str:
    """A one-layer image holding one file (`docker import`): its id."""
    import docker

    data = marker.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("canary.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    client = docker.from_env()
    reference = f"cs-tests-tiny:{uuid.uuid4().hex[:12]}"
    client.api.import_image_from_data(buffer.getvalue(), repository=reference)
    return client.images.get(reference).id


def anonymous_docker(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """The docker CLI with an empty config: no login of any operator's is used."""
    config = tmp_path / "docker-config"
    config.mkdir(exist_ok=True)
    return subprocess.run(
        ["docker", *args],
        env={**os.environ, "DOCKER_CONFIG": str(config)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def manifest_digest(repository: str, tag: str) -> str | None:
    """The digest the registry serves for repository:tag (read with the login), None if absent."""
    accept = (
        "application/vnd.docker.distribution.manifest.v2+json,"
        " application/vnd.oci.image.manifest.v1+json"
    )
    response = httpx.head(
        f"http://{REGISTRY}/v2/{repository}/manifests/{tag}",
        headers={"Accept": accept},
        auth=registry_auth(),
        timeout=10,
    )
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return response.headers["Docker-Content-Digest"]


def holding(secret: str, texts: dict[str, str]) -> list[str]:
    """The names of the texts that hold `secret`. Computed outside an assert, so that a failing
    assert shows these names, never the secret (pytest prints the operands it compared)."""
    return [name for name, text in texts.items() if secret in text]


def catalog() -> list[str]:
    response = httpx.get(f"http://{REGISTRY}/v2/_catalog", auth=registry_auth(), timeout=10)
    response.raise_for_status()
    return response.json()["repositories"] or []


class Log:
    """What push_stream logs, kept to check the password never reaches a log line."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str, *args: object) -> None:
        self.lines.append(message % args if args else message)

    warning = error = info


def platform_push(image_id: str, repository: str, tag: str) -> str:
    """The publish flow's push (tiers/docker.push_stream with resolve_registry()): its digest."""
    import docker
    from prefect_cs.tiers.docker import push_stream, pushed_digest, resolve_registry

    registry = resolve_registry()
    assert registry.block_name == REGISTRY_BLOCK and registry.username == "cs-publisher"
    docker.from_env().images.get(image_id).tag(f"{REGISTRY}/{repository}", tag)
    log = Log()
    digest = pushed_digest(
        f"{REGISTRY}/{repository}", tag, push_stream(f"{REGISTRY}/{repository}", tag, registry, log)
    )
    leaked = holding(registry.password or "", {"push log": "\n".join(log.lines)})
    assert log.lines and not leaked
    return digest


@pytest.fixture(scope="module")
def victim(registry) -> str:
    """cs-tests/victim:v1 pushed by the platform, with its login: the digest it got."""
    digest = platform_push(tiny_image(f"victim-{uuid.uuid4().hex}"), VICTIM, "v1")
    assert manifest_digest(VICTIM, "v1") == digest
    return digest


def test_registry_api_refuses_requests_without_the_login(registry):
    user, password = registry_auth()
    for path in ("/v2/", "/v2/_catalog", f"/v2/{VICTIM}/tags/list"):
        anonymous = httpx.get(f"http://{REGISTRY}{path}", timeout=10)
        assert anonymous.status_code == 401, (path, anonymous.status_code)
        assert anonymous.headers["WWW-Authenticate"] == 'Basic realm="cs-registry"'
        wrong = httpx.get(f"http://{REGISTRY}{path}", auth=(user, password + "0"), timeout=10)
        assert wrong.status_code == 401, path
    with_login = httpx.get(f"http://{REGISTRY}/v2/_catalog", auth=(user, password), timeout=10)
    assert with_login.status_code == 200


def test_platform_push_succeeds_with_its_login(victim):
    assert victim.startswith("sha256:")
    tags = httpx.get(
        f"http://{REGISTRY}/v2/{VICTIM}/tags/list", auth=registry_auth(), timeout=10
    ).json()
    assert tags["tags"] == ["v1"]


def test_push_without_the_login_is_refused_and_names_the_fix(registry):
    """The platform's push with no block set (CS_REGISTRY only) fails with the fix, nothing
    pushed."""
    import docker
    from prefect_cs.core.errors import StepFailed
    from prefect_cs.tiers.docker import Registry, push_stream

    repository = f"{REGISTRY}/{CANARY}"
    docker.from_env().images.get(tiny_image("sdk-anonymous")).tag(repository, "sdk")
    with pytest.raises(StepFailed, match="CS_REGISTRY_BLOCK=cs-registry") as failed:
        push_stream(repository, "sdk", Registry(host=REGISTRY), Log())
    assert "no basic auth credentials" in str(failed.value)
    assert manifest_digest(CANARY, "sdk") is None


def test_anonymous_docker_push_and_pull_are_refused(victim, tmp_path):
    import docker

    client = docker.from_env()
    # Create a repository, as the attack in the issue did.
    client.images.get(tiny_image("canary")).tag(f"{REGISTRY}/{CANARY}", "1")
    pushed = anonymous_docker(tmp_path, "push", f"{REGISTRY}/{CANARY}:1")
    assert pushed.returncode != 0 and "no basic auth credentials" in pushed.stderr, pushed
    # Push over the victim's tag.
    client.images.get(tiny_image("overwrite")).tag(f"{REGISTRY}/{VICTIM}", "v1")
    over = anonymous_docker(tmp_path, "push", f"{REGISTRY}/{VICTIM}:v1")
    assert over.returncode != 0 and "no basic auth credentials" in over.stderr, over
    # Read the victim's image.
    client.images.remove(f"{REGISTRY}/{VICTIM}:v1")
    pulled = anonymous_docker(tmp_path, "pull", f"{REGISTRY}/{VICTIM}:v1")
    assert pulled.returncode != 0 and "no basic auth credentials" in pulled.stderr, pulled
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(f"{REGISTRY}/{VICTIM}:v1")

    assert CANARY not in catalog()
    assert manifest_digest(VICTIM, "v1") == victim, "the victim's tag was overwritten"


ATTACK = r"""
import json, sys, urllib.request, urllib.error
base, canary = "http://127.0.0.1:5000", sys.argv[1]
manifest = json.dumps({"schemaVersion": 2, "mediaType":
    "application/vnd.docker.distribution.manifest.v2+json"}).encode()
tries = {
    "catalog": ("GET", "/v2/_catalog", None),
    "read_victim": ("GET", "/v2/cs-tests/victim/manifests/v1", None),
    "start_upload": ("POST", f"/v2/{canary}/blobs/uploads/", b""),
    "put_manifest": ("PUT", f"/v2/{canary}/manifests/1", manifest),
    "overwrite_victim": ("PUT", "/v2/cs-tests/victim/manifests/v1", manifest),
    "delete_victim": ("DELETE", "/v2/cs-tests/victim/manifests/v1", None),
}
out = {}
for name, (method, path, body) in tries.items():
    request = urllib.request.Request(base + path, data=body, method=method)
    request.add_header("Content-Type", "application/vnd.docker.distribution.manifest.v2+json")
    try:
        out[name] = urllib.request.urlopen(request, timeout=10).status
    except urllib.error.HTTPError as exc:
        out[name] = exc.code
    except OSError as exc:
        out[name] = f"unreachable: {exc}"
print("ATTACK " + json.dumps(out))
"""


def test_model_container_on_the_host_network_creates_nothing(victim, tmp_path):
    """Model code's view: uid 10001 in a container on the host's network (install.sh with
    network, `internet: true`), no login. It reaches the registry and is refused every time."""
    from prefect_cs.testing.docker_tier import BASE_IMAGE

    done = subprocess.run(
        ["docker", "run", "--rm", "--network", "host", "--user", "10001:10001"]
        + ["--cap-drop", "ALL", BASE_IMAGE, "python3", "-c", ATTACK, CANARY],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("ATTACK "))
    answers = json.loads(line.removeprefix("ATTACK "))
    assert len(answers) == 6 and all(code == 401 for code in answers.values()), answers
    assert CANARY not in catalog()
    assert manifest_digest(VICTIM, "v1") == victim


def test_login_is_root_only_and_on_no_command_line_or_log(registry):
    _, password = registry_auth()
    folder = CREDENTIALS.parent
    assert (folder.stat().st_mode & 0o777, folder.stat().st_uid) == (0o700, 0)
    for path in (CREDENTIALS, folder / "htpasswd"):
        assert (path.stat().st_mode & 0o777, path.stat().st_uid) == (0o600, 0), path
    user, _, digest = (folder / "htpasswd").read_text().strip().partition(":")
    assert user == "cs-publisher" and digest.startswith("$2y$")
    length = len(password)  # outside the assert, which would print the argument
    assert length == 64  # 256 random bits, hex
    texts = {"htpasswd": digest, "registry log": Path("/var/log/cs-registry.log").read_text()}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            texts[str(cmdline)] = cmdline.read_text(errors="replace")
        except OSError:
            pass  # the process ended
    leaked = holding(password, texts)
    assert not leaked, "the registry's password is in these"


def test_start_engine_is_idempotent_and_keeps_the_login(registry):
    """Run again: the same login, the same registry process, nothing secret printed."""
    pid, login = Path("/run/cs-registry.pid").read_text(), CREDENTIALS.read_text()
    done = subprocess.run(
        ["bash", str(SCRIPTS / "start-engine.sh")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "restarting" not in done.stdout and "starting docker-registry" not in done.stdout
    same_login = CREDENTIALS.read_text() == login  # compared outside the assert: no password shown
    assert Path("/run/cs-registry.pid").read_text() == pid and same_login
    leaked = holding(registry_auth()[1], {"stdout": done.stdout, "stderr": done.stderr})
    assert not leaked


def test_docker_up_saves_the_login_as_the_block(registry):
    """`prefect-cs docker up`: the engine (already up) and the cs-registry block from the file."""
    from prefect_cs.cli.main import app
    from prefect_docker.credentials import DockerRegistryCredentials
    from typer.testing import CliRunner

    user, password = registry_auth()
    DockerRegistryCredentials(username=user, password="stale", registry_url=REGISTRY).save(
        REGISTRY_BLOCK, overwrite=True
    )
    result = CliRunner().invoke(app, ["docker", "up"])
    assert result.exit_code == 0, result.output
    assert f"export CS_REGISTRY_BLOCK={REGISTRY_BLOCK}" in result.output
    leaked = holding(password, {"output": result.output})
    assert not leaked
    block = DockerRegistryCredentials.load(REGISTRY_BLOCK)
    saved = block.password.get_secret_value() == password  # not "stale" any more
    assert (block.username, block.registry_url, saved) == (user, REGISTRY, True)


def test_missing_login_file_names_the_fix(tmp_path):
    from prefect_cs.core.errors import StepFailed
    from prefect_cs.tiers.docker import local_registry_login

    with pytest.raises(StepFailed, match="prefect-cs docker up"):
        local_registry_login(tmp_path / "credentials")
    for text in ('{"registry_url": "127.0.0.1:5000"}', "[]"):
        (tmp_path / "credentials").write_text(text)
        with pytest.raises(StepFailed, match="lacks registry_url, username or password"):
            local_registry_login(tmp_path / "credentials")


def test_kubernetes_pull_secret_is_rendered_from_the_block_and_works(registry):
    """`prefect-cs k8s render`'s `cs-registry` Secret: valid, named where Jobs and inputs
    servers look for it, and the login in it is one the real registry accepts."""
    from prefect_cs.infra.kubernetes import operator_manifests, template_default
    from prefect_cs.testing.manifests import validate

    manifests = operator_manifests([], "http://prefect-server.prefect:4200/api")
    secrets = [m for m in manifests if m["kind"] == "Secret"]
    assert validate(manifests) == len(manifests) and len(secrets) == 1
    secret = secrets[0]
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    assert secret["metadata"] == {"name": "cs-registry", "namespace": "cs-models"}
    assert template_default("image_pull_secrets") == [{"name": "cs-registry"}]
    config = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))
    auth = config["auths"][REGISTRY]["auth"]
    response = httpx.get(
        f"http://{REGISTRY}/v2/_catalog",
        headers={"Authorization": f"Basic {auth}"},
        timeout=10,
    )
    assert response.status_code == 200
    without = operator_manifests([], "http://x:4200/api", with_secrets=False)
    assert not [m for m in without if m["kind"] == "Secret"]
