"""The embedded tier: one virtualenv per model and tag, made with uv, run by the process pool.

What is its own (the rest is the base class's): the venv is a new folder per
build, so a re-publish of a tag never disturbs the one serving; install.sh runs
with the host's conda if there is one; a requirements override installs with uv,
like the rest of the venv (the Docker tier's images use pip); nothing is pushed; the
process pool needs no job variables, because the flow finds the model's venv
from its model config when the run starts. install.sh runs in the model sandbox as
the model's uid, never as root: one that calls apt-get is refused before it runs
(tiers/base.py), and a model's `system_packages` must already be installed on the
machine, which publish checks with dpkg-query; where dpkg says they keep data outside
/usr and /etc (/var/lib/texmf), the sandbox shows it read-only (runtime/system_packages.py).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from prefect_cs.blocks.model_config import ModelConfig, PublishedTag
from prefect_cs.core.errors import StepFailed
from prefect_cs.core.home import traverse_path
from prefect_cs.core.names import path_component
from prefect_cs.core.process_owner import owner_gone, process_identity
from prefect_cs.core.settings import get_settings
from prefect_cs.runtime.app_server import AppServer, AppSpec, server_args, url_prefix
from prefect_cs.runtime.confinement import Bounds, Confinement
from prefect_cs.runtime.environment import (
    RUNTIME_DIR,
    call_bounds,
    memory_rlimit_mib,
    model_env,
    runner_for,
)
from prefect_cs.runtime.model_process import CHILD_SCRIPT, ModelCall, call_model
from prefect_cs.runtime.sandbox import (
    Sandbox,
    closed_folder,
    environment_paths,
    interpreter_binds,
    model_interpreter,
    model_sandbox,
)
from prefect_cs.runtime.system_packages import package_binds
from prefect_cs.runtime.warm import WarmModel
from prefect_cs.tiers.base import INSTALL_SCRIPT, JobVariables, Logger, Tier
from prefect_cs.tiers.steps import run_step

TEST_REQUIREMENTS = ["cs-kit==1.16.9", "pytest==9.0.3"]
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
INSTALL_DIR = "install"  # <venv>/install: where install.sh runs, kept with the venv
APP_DIR = "app"  # <venv>/app: an interactive app's cs-config folder, what its server runs in


def uv() -> list[str]:
    return [sys.executable, "-m", "uv"]


def base_python() -> str:
    """The interpreter the platform runs on, outside of any virtualenv."""
    return getattr(sys, "_base_executable", sys.executable)


INSTALL_ENV = frozenset(
    "LANG LANGUAGE TZ SSL_CERT_FILE SSL_CERT_DIR REQUESTS_CA_BUNDLE CURL_CA_BUNDLE"
    " PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_TRUSTED_HOST PIP_CERT PIP_NO_INDEX"
    " PIP_DEFAULT_TIMEOUT PIP_CONFIG_FILE PIP_CONSTRAINT UV_INDEX UV_INDEX_URL UV_DEFAULT_INDEX"
    " UV_EXTRA_INDEX_URL UV_FIND_LINKS UV_NATIVE_TLS UV_INDEX_STRATEGY"
    " HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy".split()
)
"""What install.sh and the model's tests may see of the operator's environment: locale, time
zone, CA bundle, package index and proxy settings. Never credentials (cloud keys,
SSH_AUTH_SOCK, tokens), never PREFECT_*/CS_*."""


def package_cache() -> str:
    """The platform's own uv cache, so a publish reuses downloads (packages only, no
    credentials)."""
    return os.environ.get("UV_CACHE_DIR") or str(Path.home() / ".cache" / "uv")


def venv_environment(venv: Path) -> dict[str, str]:
    """An activated-virtualenv environment for install scripts and model tests, built from an
    allowlist (INSTALL_ENV), with a scratch HOME of the model's own (`<venv>/home`)."""
    env = {k: v for k, v in os.environ.items() if k in INSTALL_ENV or k.startswith("LC_")}
    home = venv / "home"
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        VIRTUAL_ENV=str(venv),
        HOME=str(home),
        PATH=f"{venv / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        UV_CACHE_DIR=package_cache(),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
    )
    if Path(CA_BUNDLE).exists():
        env.setdefault("PIP_CERT", CA_BUNDLE)
        env.setdefault("SSL_CERT_FILE", CA_BUNDLE)
    return env


def conda_paths() -> list[Path]:
    """The host's conda, read-only, for install scripts that call it (none here: nothing)."""
    conda = shutil.which("conda")
    return [Path(conda).resolve().parent.parent] if conda else []


def check_reachable(sandbox: Sandbox, venv: Path) -> None:
    """The model's uid must be able to reach its venv (bubblewrap binds as that uid)."""
    if sandbox.mode != "bwrap" or sandbox.run_as() is None:
        return
    blocked = closed_folder(venv)
    if blocked:
        raise StepFailed(
            f"the model user (uid {sandbox.uid}) cannot reach {venv}: {blocked} is not"
            " searchable by other users. Put CS_HOME where others can traverse (e.g."
            f" /var/lib/prefect-cs), or `chmod o+x {blocked}`"
        )


def missing_system_packages(names: list[str]) -> list[str]:
    """Which of these Debian packages dpkg does not list as installed on this machine."""
    if not names:
        return []
    dpkg_query = shutil.which("dpkg-query")
    if dpkg_query is None:
        raise StepFailed(
            f"the model needs system packages ({', '.join(names)}), which the local tier checks"
            " with dpkg-query, missing here (not a Debian or Ubuntu machine): publish on the docker"
            " tier (CS_TIER=docker), where they are installed in the image"
        )
    listed = subprocess.run(
        [dpkg_query, "--show", "--showformat=${Package} ${db:Status-Status}\n", "--", *names],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    installed = {
        line.split()[0] for line in listed.stdout.splitlines() if line.endswith(" installed")
    }
    return [name for name in names if name not in installed]


def system_package_binds(model: ModelConfig) -> list[str]:
    """Where the model's declared Debian packages keep data outside /usr and /etc (texlive's
    /var/lib/texmf), from dpkg's database on the host, never the platform's own folders."""
    return package_binds(model.system_packages, [get_settings().home, Path(sys.prefix)])


def venv_of(entry: PublishedTag) -> Path:
    return Path(entry.python).parent.parent


def step_bounds(model: ModelConfig) -> Bounds:
    """A publish step (install.sh, the cs-config install, the model's tests) gets the model's
    own memory, pids and CPUs, like its simulations; its writes go to the venv or checkout."""
    return Bounds(
        memory_mib=model.memory_limit_mib, pids=model.pids, cpus=model.cpu, disk_mib=model.disk_mib
    )


BUILDING = ".building"  # beside a venv its publish has not registered yet: the publisher


def building_marker(venv: Path) -> Path:
    """`<venv>.building`, in the tag's folder (the platform's; the model writes only inside
    its venv): the publish process that is building the venv (core/process_owner)."""
    return venv.with_name(venv.name + BUILDING)


def remove_environment(venv: Path) -> None:
    shutil.rmtree(venv, ignore_errors=True)  # links inside are removed, never followed
    building_marker(venv).unlink(missing_ok=True)


def sweep_unclaimed_environments(in_use: set[Path]) -> list[Path]:
    """Remove the venvs whose publish was killed outright (SIGKILL, OOM, a restart) before it
    registered or discarded them: their marker names a publish process of this host that is
    gone. A failed publish discards its own venv; only a kill leaves one, hundreds of MB each.
    in_use: the venvs the registry names, kept whatever their marker says (a publish killed
    right after registering), and their marker dropped."""
    removed = []
    for marker in sorted(get_settings().envs_dir.glob(f"*/*/*/*{BUILDING}")):
        venv = marker.with_name(marker.name.removesuffix(BUILDING))
        if venv in in_use:
            marker.unlink(missing_ok=True)
            continue
        try:
            owner = marker.read_text()[:300]
        except OSError:
            continue
        if owner_gone(owner):
            remove_environment(venv)
            removed.append(venv)
    return removed


def seal_environment(venv: Path) -> None:
    """After the model's install steps: the venv becomes root's and read-only to the model.

    Every file the model's uid wrote is handed to root, with no write bit for others and no
    set-id bit, so no later call (simulate, inputs, the model's own tests) can change what
    the next one runs; the platform's runner is copied in again over whatever is there.
    Entries are never followed (lstat, lchown; links are left as links).
    """
    if os.geteuid() != 0:
        return
    for root, dirs, files in os.walk(venv):
        for name in [*dirs, *files]:
            _seal(Path(root, name))
    _seal(venv)
    runtime = venv / RUNTIME_DIR
    shutil.rmtree(runtime, ignore_errors=True)
    runtime.mkdir(mode=0o755)
    shutil.copyfile(CHILD_SCRIPT, runtime / CHILD_SCRIPT.name)
    os.chmod(runtime / CHILD_SCRIPT.name, 0o644)


def _seal(path: Path) -> None:
    info = path.lstat()
    if info.st_uid != 0 or info.st_gid != 0:
        os.lchown(path, 0, 0)
    if stat.S_ISLNK(info.st_mode):
        return
    if info.st_uid == 0 and not info.st_mode & 0o7022:
        return  # the platform's own file (or a link to one): left as it is
    mode = stat.S_IMODE(info.st_mode) & 0o755  # no set-id, sticky or group/other write bits
    readable = 0o555 if stat.S_ISDIR(info.st_mode) or mode & 0o100 else 0o444
    os.chmod(path, mode | readable)


class LocalJobVariables(JobVariables):
    """None: the process pool's defaults serve every model (its venv comes from the model
    config)."""


class LocalTier(Tier):
    """A virtualenv per model and tag on this machine, run by the process pool."""

    name = "local"
    pool_type = "process"
    pool_setting = "process_pool"
    variables_model = LocalJobVariables
    pip_install = "pip install"  # the venv's own pip: install.sh runs sandboxed, without uv

    def env_dir(self, model: ModelConfig, tag: str) -> Path:
        """A new folder per build, so a re-publish of a tag never disturbs the one serving."""
        folder = get_settings().envs_dir / model.owner / model.title / path_component(tag)
        return folder / uuid.uuid4().hex[:12]

    def has_conda(self) -> bool:
        return shutil.which("conda") is not None

    def check_system_packages(self, model: ModelConfig) -> None:
        """install.sh cannot install them here (it is not root): they must be there already."""
        missing = missing_system_packages(model.system_packages)
        if missing:
            raise StepFailed(
                f"{model.owner}/{model.title} needs system packages that are not installed on"
                f" this machine: {', '.join(missing)}. The local tier never installs them (model"
                " code does not run as root): have an operator run `sudo apt-get install -y"
                f" {' '.join(missing)}` and publish again, or publish on the docker tier"
                " (CS_TIER=docker), which installs them in the image"
            )

    def create(self, model: ModelConfig, cs_config: Path, tag: str, logger: Logger) -> PublishedTag:
        venv = self.env_dir(model, tag)
        traverse_path(venv.parent)
        building_marker(venv).write_text(process_identity() or "")  # until registered
        python = model_interpreter(f"{sys.version_info[0]}.{sys.version_info[1]}", base_python())
        # Recorded now, before any model code runs: later its venv's pyvenv.cfg and links are
        # the model's own writing, and the platform takes no path from them.
        binds = [*interpreter_binds(python), *system_package_binds(model)]
        entry = PublishedTag(
            tag=tag, tier=self.name, python=str(venv / "bin" / "python"), sandbox_binds=binds
        )
        try:
            self._create(model, cs_config, venv, python, entry, logger)
            seal_environment(venv)
        except BaseException:
            remove_environment(venv)
            raise
        return entry

    def _create(
        self,
        model: ModelConfig,
        cs_config: Path,
        venv: Path,
        python: str,
        entry: PublishedTag,
        logger: Logger,
    ) -> None:
        """The platform makes the venv and adds its test tools; the model's own steps (install.sh,
        building cs_config) run in the model sandbox, with network, writing only the venv."""
        run_step("create-venv", uv() + ["venv", "--seed", "--python", python, str(venv)], logger)
        env_python = str(venv / "bin" / "python")
        run_step(
            "install-test-tools",
            uv() + ["pip", "install", "--python", env_python, *TEST_REQUIREMENTS],
            logger,
            env=venv_environment(venv),
        )
        runtime = venv / RUNTIME_DIR
        runtime.mkdir()
        shutil.copy2(CHILD_SCRIPT, runtime / CHILD_SCRIPT.name)
        install = self.write_install_folder(model, cs_config, venv / INSTALL_DIR)
        venv_environment(venv)  # makes <venv>/home before the venv is handed to the model's uid
        self.model_step(
            "install.sh",
            ["bash", "-e", f"./{INSTALL_SCRIPT}"],
            logger,
            model=model,
            entry=entry,
            cwd=install,
            writable=[venv],
            network=True,
            hint="This is the model's own install.sh; fix it or set install_override in the model"
            " config.",
        )
        self.model_step(
            "install-cs-config",
            [env_python, "-m", "pip", "install", "-q", "--no-build-isolation", str(cs_config)],
            logger,
            model=model,
            entry=entry,
            cwd=cs_config,
            writable=[venv, cs_config],
            network=True,
        )
        if model.interactive:  # its server runs scripts of the folder (bokeh, streamlit)
            shutil.copytree(cs_config, venv / APP_DIR, symlinks=True)

    def model_step(
        self,
        name: str,
        argv: list[str],
        logger: Logger,
        *,
        model: ModelConfig,
        entry: PublishedTag,
        cwd: Path,
        writable: list[Path],
        network: bool,
        timeout: float = 1800,
        hint: str = "",
        scratch_home: bool = False,
    ) -> None:
        """A step that runs the model's code: in its sandbox and kernel bounds, as its uid,
        writing only `writable` (and its own work folder: its HOME when `scratch_home`)."""
        sandbox, venv = model_sandbox(), venv_of(entry)
        check_reachable(sandbox, venv)
        sandbox.prepare(*writable)
        readable = [*environment_paths(entry.python, entry.sandbox_binds), *conda_paths()]
        bounds = step_bounds(model)
        with Confinement(sandbox, "step", bounds, network=network) as box:
            sandbox.prepare(box.work)
            env = venv_environment(venv)
            if scratch_home:
                env["HOME"] = str(box.work)
            try:
                run_step(
                    name,
                    box.wrap(argv, readable=readable, writable=writable, cwd=cwd),
                    logger,
                    cwd=cwd,
                    env=env,
                    timeout=timeout,
                    hint=hint,
                    start=box.popen,
                )
            except StepFailed as failed:
                hit = box.limit_hit()
                raise StepFailed(f"{name}: {hit}\n{failed}") if hit else failed from None

    def run_tests(
        self, model: ModelConfig, entry: PublishedTag, source: Path, logger: Logger
    ) -> None:
        cs_config = source / model.cs_config_path
        self.model_step(
            "model-tests",
            [entry.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "cs_config/tests"],
            logger,
            model=model,
            entry=entry,
            cwd=cs_config,
            writable=[cs_config],
            network=model.internet,
            scratch_home=True,
            timeout=max(600, model.time_limit * 5),
            hint="The model's own tests failed inside its new environment; the previous tag keeps"
            " serving.",
        )

    def get_version(self, entry: PublishedTag, logger: Logger) -> str:
        """In the model sandbox like every call of the model's code."""
        call = call_model(
            entry.python,
            "get_version",
            [],
            timeout=120,
            runner=runner_for(entry.python),
            binds=entry.sandbox_binds,
        )
        if not call.ok:
            raise StepFailed(f"get_version() failed in the new environment: {call.error}")
        return str(call.result)

    def render_environment(self, entry: PublishedTag) -> Path | None:
        """The venv the model's calls run in, which their sandbox binds read-only too."""
        return venv_of(entry)

    def registered(self, entry: PublishedTag) -> None:
        """The registry names the venv now: it is no longer a build a sweep may claim."""
        building_marker(venv_of(entry)).unlink(missing_ok=True)

    def discard(self, entry: PublishedTag, logger: Logger) -> None:
        remove_environment(venv_of(entry))
        logger.info("discarded the failed environment of %s", entry.tag)

    def call_model(
        self,
        model: ModelConfig,
        entry: PublishedTag,
        function: str,
        args: list[Any],
        env: dict[str, str],
    ) -> ModelCall:
        """A child of the model's venv in the model sandbox and the call's kernel bounds."""
        try:
            sandbox = model_sandbox()  # warns when it is none
        except LookupError as exc:  # no sandbox this machine can make: the call cannot start
            return ModelCall(ok=False, error=str(exc))
        return call_model(
            entry.python,
            function,
            args,
            timeout=model.time_limit,
            env=env,
            memory_limit_mib=memory_rlimit_mib(model),
            runner=runner_for(entry.python),
            network=model.internet,
            sandbox=sandbox,
            binds=entry.sandbox_binds,
            bounds=call_bounds(model),
        )

    def warm_model(
        self, model: ModelConfig, entry: PublishedTag, env: dict[str, str], fingerprint: str
    ) -> WarmModel:
        """A zygote of the model's venv in its sandbox (runtime/warm.py)."""
        return WarmModel(
            entry.python,
            runner_for(entry.python),
            env,
            network=model.internet,
            memory_limit_mib=memory_rlimit_mib(model),
            fingerprint=fingerprint,
            binds=tuple(entry.sandbox_binds),
            bounds=call_bounds(model),
        )

    def app_spec(self, model: ModelConfig, entry: PublishedTag, deployment_name: str) -> AppSpec:
        """An interactive app's server from its venv, with C/S's command and environment
        (OWNER, TITLE, URL_BASE_PATHNAME, its declared secrets) and its simulations' bounds."""
        prefix = url_prefix(model.owner, model.title, deployment_name)
        args = server_args(
            model.tech,
            app_location=model.app_location,
            callable_name=model.callable_name,
            prefix=prefix,
            cpu=model.cpu,
            origin=app_origin(),
        )
        env = {**model_env(model), "OWNER": model.owner, "TITLE": model.title}
        env["URL_BASE_PATHNAME"] = prefix
        return AppSpec(
            python=entry.python,
            binds=tuple(entry.sandbox_binds),
            app_dir=venv_of(entry) / APP_DIR,
            args=tuple(args),
            bounds=call_bounds(model),
            env=env,
        )

    def start_app(self, model: ModelConfig, entry: PublishedTag, deployment_name: str) -> AppServer:
        """The app's server, started in its sandbox (not yet answering: wait_ready)."""
        spec = self.app_spec(model, entry, deployment_name)
        return AppServer(spec, get_settings().home / "apps" / "run").start()


def app_origin() -> str:
    """host:port of the front door as browsers reach it (Bokeh's allowed websocket origin)."""
    from urllib.parse import urlsplit

    apps = get_settings().apps
    return urlsplit(apps.public_url).netloc if apps.public_url else f"{apps.host}:{apps.port}"
