"""The one base class every runtime tier extends, so the publish flow stays one flow.

A tier is where a model's environment lives and where its simulations run: a
virtualenv on the process pool (local), an image on the Docker pool (docker),
the same image as a Kubernetes Job (kubernetes). Like repo2docker's
`buildpacks/base.py`, the base class below holds every build step the tiers
share and documents the hooks; a tier overrides only what differs.
"""

from __future__ import annotations

import importlib
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any, ClassVar, Protocol

from prefect_cs.blocks.model_config import ModelConfig, PublishedTag
from prefect_cs.core.errors import InvalidValue, StepFailed
from prefect_cs.core.settings import get_settings
from prefect_cs.runtime.model_process import ModelCall
from pydantic import BaseModel, ConfigDict

Logger = logging.Logger | logging.LoggerAdapter

INSTALL_SCRIPT = "install.sh"
OVERRIDE_REQUIREMENTS = "override-requirements.txt"
NO_INSTALL_SCRIPT = "echo 'no install.sh: nothing to install before cs-config'\n"


class WarmCaller(Protocol):
    """A model kept warm for light calls: the process tier's WarmModel, a container's
    WarmContainer."""

    fingerprint: str

    def call(self, function: str, args: list[Any], timeout: float) -> ModelCall: ...

    def stop(self) -> None: ...


class EarlyCaller(Protocol):
    """A simulation's model call started ahead of its request (runtime/container.EarlyCall)."""

    def call(self, function: str, args: list[Any]) -> ModelCall | None: ...

    def close(self) -> None: ...


class JobVariables(BaseModel):
    """What a tier's deployments set in its work pool's base job template (typed, like
    prefect-docker's DockerWorkerJobConfiguration). Field names are template variables
    (tests/test_tiers.py checks them against work_pools/); unset fields are left out, so
    the pool's defaults apply."""

    model_config = ConfigDict(extra="forbid")


def uses_conda(script: str) -> bool:
    return any(line.strip().startswith(("conda ", "mamba ")) for line in script.splitlines())


SYSTEM_PACKAGE_TOOLS = {"apt-get", "apt", "aptitude", "dpkg"}
_SEPARATORS = re.compile(r"&&|\|\||[;|&()]")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def system_package_lines(script: str) -> list[str]:
    """The lines of a shell script that run the system's package manager (apt-get, apt,
    aptitude, dpkg), directly or through sudo, env or VAR=value prefixes: those need root."""
    found = []
    for line in script.splitlines():
        code = line.split("#", 1)[0]
        if any(_runs_package_tool(part.split()) for part in _SEPARATORS.split(code)):
            found.append(line.strip())
    return found


def _runs_package_tool(words: list[str]) -> bool:
    while words and (words[0] in ("sudo", "env", "exec") or _ASSIGNMENT.match(words[0])):
        words = words[1:]
    return bool(words) and words[0].rsplit("/", 1)[-1] in SYSTEM_PACKAGE_TOOLS


def apt_packages(lines: list[str]) -> list[str]:
    """Package names an `apt-get install a b` line names (for the refusal's suggested config)."""
    names: list[str] = []
    for line in lines:
        words = line.split()
        if "install" in words:
            after = words[words.index("install") + 1 :]
            names += [w for w in after if not w.startswith("-") and w not in ("&&", "\\")]
    return list(dict.fromkeys(names))


class Tier:
    """A runtime tier: builds, tests and ships a model's environment; says how its pool runs it.

    The publish flow calls, in order: `build`, `test`, `model_version`, `push`
    (`discard` when the tests fail), then `job_variables` for the simulate
    deployment on the pool named by `pool_name`.

    Shared here, identical on every tier:

    - the layout check: `cs_config_path` must hold the `cs_config` package;
    - the tests check: a model must ship `cs_config/tests`;
    - the install folder, and how install.sh runs (below);
    - a failed `get_version()` discards the new environment.

    **install.sh semantics (every tier).** The model's dependencies are installed
    by running `bash -e ./install.sh` in a folder of its own that holds only that
    script (and `override-requirements.txt` for a requirements override), with the
    model's virtualenv activated (`pip` and `python` are the model's). The folder is
    part of the environment and outlives the build (`<venv>/install` locally,
    `/opt/cs/install` in an image), so the scripts real apps ship — install from an
    index, or `git clone` a repository, `cd` into it and `pip install -e .` — keep
    working after publish deletes the checkout. The script sees no other file of
    the repository: on the Docker tier that is what lets a code-only change reuse the
    dependency layer, and the local tier does the same so that an app that
    publishes on one tier publishes on all. Compute Studio ran
    `bash ./cs-config/install.sh` from the repository root with the whole checkout
    around it; an install.sh that reads files beside it needs `install_override`
    (pip requirements, one per line, or `run: <command>`), which is written into
    the same folder and runs the same way. Conda lines are refused with that fix
    where the tier has no conda. Calls of the system's package manager (apt-get,
    apt, aptitude, dpkg) need root: image tiers (`installs_as_root`) run install.sh
    as root in the build, as Compute Studio's Dockerfile did, after the model
    config's `system_packages`; elsewhere they are refused before anything runs, and
    `check_system_packages` says whether the listed packages can be had.

    Subclasses set `name`, `pool_type`, `pool_setting` and `variables_model`, and
    implement `create`, `run_tests`, `get_version`, `discard` and `variables`;
    `push` is a no-op unless the environment must travel to the workers.
    """

    name: ClassVar[str]
    """The tier's name: CS_TIER and PublishedTag.tier."""
    pool_type: ClassVar[str]
    """The Prefect worker type whose pools run this tier's simulations."""
    pool_setting: ClassVar[str]
    """The settings field (core/settings.py) that names this tier's work pool."""
    variables_model: ClassVar[type[JobVariables]] = JobVariables
    """The typed job variables this tier sets; a subset of the pool template's variables."""
    pip_install: ClassVar[str] = "pip install"
    """How install.sh installs a requirements override (the model venv is active)."""
    inputs_on_shared_worker: ClassVar[bool] = True
    """Whether the shared inputs worker (`prefect-cs stack start`) answers this tier's light
    calls, starting the model's warm process or container itself; else (Kubernetes) each
    model has an inputs server of its own, beside its model container."""
    installs_as_root: ClassVar[bool] = False
    """Whether install.sh and `system_packages` run as root (image builds); else an install.sh
    that calls apt-get is refused before it runs, and the packages must already be there."""

    @property
    def pool_name(self) -> str:
        """The work pool this tier deploys to, from the settings (CS_PROCESS_POOL, …)."""
        return str(getattr(get_settings(), self.pool_setting))

    # ---- the publish steps (the flow calls these; tiers override the hooks below) ----

    def build(self, model: ModelConfig, source: Path, tag: str, logger: Logger) -> PublishedTag:
        """Create the model's isolated environment for `tag` from its checked-out source."""
        return self.create(model, self.prepare(model, source), tag, logger)

    def test(self, model: ModelConfig, entry: PublishedTag, source: Path, logger: Logger) -> None:
        """Run the model's own tests inside the environment; raise StepFailed on failure."""
        self.tests_folder(model, source)
        self.run_tests(model, entry, source, logger)

    def start_app(self, model: ModelConfig, entry: PublishedTag, deployment_name: str) -> Any:
        """One deployment's server, started (not yet answering: its `wait_ready`); tiers that
        can run one override (local: a sandboxed process; docker: a container)."""
        raise StepFailed(
            f"interactive apps (tech {model.tech}) are not served on the {self.name} tier yet:"
            " publish them on the local or docker tier (CS_TIER=local or docker)"
        )

    def smoke_server(self, model: ModelConfig, entry: PublishedTag) -> Any:
        """The server publish's smoke start asks (a deployment's, unless a tier says otherwise)."""
        return self.start_app(model, entry, "smoke-start")

    def smoke_start(self, model: ModelConfig, entry: PublishedTag, logger: Logger) -> None:
        """Publish's check of an interactive app: its server must answer HTTP before promote."""
        from prefect_cs.runtime.app_server import url_prefix

        started = time.monotonic()
        server = self.smoke_server(model, entry)
        try:
            prefix = url_prefix(model.owner, model.title, "smoke-start")
            problem = server.wait_ready(prefix, get_settings().apps.start_seconds)
        finally:
            server.stop()
        if problem:
            raise StepFailed(f"smoke start of the {model.tech} app failed: {problem}")
        logger.info(
            "the %s app answered HTTP %.1f s after its start (%s tier)",
            model.tech,
            time.monotonic() - started,
            self.name,
        )

    def model_version(self, entry: PublishedTag, logger: Logger) -> str:
        """get_version() inside the new environment; a failure discards it, so it never serves."""
        try:
            return self.get_version(entry, logger)
        except Exception:
            self.discard(entry, logger)
            raise

    def push(self, model: ModelConfig, entry: PublishedTag, logger: Logger) -> PublishedTag:
        """Make the environment available to the tier's workers (default: it already is)."""
        logger.info(
            "the %s tier needs no push: %s stays where it was built", self.name, entry.python
        )
        return entry

    def job_variables(self, model: ModelConfig, entry: PublishedTag) -> dict[str, Any]:
        """The simulate deployment's job variables for this tier's work pool, as plain JSON."""
        return self.variables(model, entry).model_dump(mode="json", exclude_none=True)

    # ---- shared steps ---------------------------------------------------------------

    def prepare(self, model: ModelConfig, source: Path) -> Path:
        """The checks every tier makes before building; returns the cs-config folder."""
        cs_config = source / model.cs_config_path
        if not (cs_config / "cs_config").is_dir():
            raise StepFailed(
                f"no cs_config package at {model.cs_config_path}/cs_config in"
                f" {model.repo_url}@{model.repo_tag}: set cs_config_path in the model config"
                " to the folder holding install.sh and cs_config/"
            )
        self.check_install_script(model, cs_config)
        self.check_system_packages(model)
        return cs_config

    def tests_folder(self, model: ModelConfig, source: Path) -> Path:
        tests = source / model.cs_config_path / "cs_config" / "tests"
        if not tests.is_dir():
            raise StepFailed(
                f"no tests at {model.cs_config_path}/cs_config/tests: a model must ship its test"
                " suite"
            )
        return tests

    def check_install_script(self, model: ModelConfig, cs_config: Path) -> None:
        """Refuse, before anything runs, an install script this tier cannot run, naming the fix:
        conda where there is none, system packages where it does not run as root."""
        override = (model.install_override or "").strip()
        if override.startswith("run:"):
            self.check_system_package_lines(model, "install_override", override[4:])
        script = cs_config / INSTALL_SCRIPT
        if override or not script.exists():
            return
        text = script.read_text()
        if uses_conda(text) and not self.has_conda():
            raise StepFailed(
                f"{model.cs_config_path}/install.sh uses conda, which is not available on the"
                f" {self.name} tier. Set install_override in the model config to the pip"
                " requirements it needs (one per line), or to 'run: <command>'."
            )
        self.check_system_package_lines(model, f"{model.cs_config_path}/install.sh", text)

    def check_system_package_lines(self, model: ModelConfig, where: str, script: str) -> None:
        lines = system_package_lines(script)
        if lines and not self.installs_as_root:
            raise StepFailed(self.system_packages_refusal(model, where, lines))

    def system_packages_refusal(self, model: ModelConfig, where: str, lines: list[str]) -> str:
        names = apt_packages(lines) or ["<package>"]
        return (
            f"{where} installs system packages ({lines[0]!r}), which the {self.name} tier cannot"
            f" do: there it runs as the model's unprivileged user, in its sandbox, not as root."
            " Either publish on the docker tier (CS_TIER=docker; kubernetes uses the same image),"
            " where install.sh runs as root in the image build as on Compute Studio; or list the"
            f" packages in the model config (system_packages: [{', '.join(names)}]: installed"
            " as a plain `apt-get install` does, recommended packages included), have an"
            f" operator install them on this machine (sudo apt-get install -y {' '.join(names)}),"
            " and set install_override to the rest of install.sh (pip requirements, one per line,"
            " or 'run: <command>')."
        )

    def write_install_folder(self, model: ModelConfig, cs_config: Path, dest: Path) -> Path:
        """The folder install.sh runs in (see the class docstring): the script, nothing else."""
        dest.mkdir(parents=True)
        override = (model.install_override or "").strip()
        script = cs_config / INSTALL_SCRIPT
        if override.startswith("run:"):
            (dest / INSTALL_SCRIPT).write_text(override[4:].strip() + "\n")
        elif override:
            (dest / OVERRIDE_REQUIREMENTS).write_text(override + "\n")
            (dest / INSTALL_SCRIPT).write_text(f"{self.pip_install} -r {OVERRIDE_REQUIREMENTS}\n")
        elif script.exists():
            shutil.copy2(script, dest / INSTALL_SCRIPT)
        else:
            (dest / INSTALL_SCRIPT).write_text(NO_INSTALL_SCRIPT)
        return dest

    # ---- hooks: what differs between tiers ------------------------------------------

    def has_conda(self) -> bool:
        """Whether install.sh may call conda on this tier."""
        return False

    def check_system_packages(self, model: ModelConfig) -> None:
        """Before building: the model's `system_packages` can be had (image tiers install them)."""

    def create(self, model: ModelConfig, cs_config: Path, tag: str, logger: Logger) -> PublishedTag:
        """Make the environment: install folder run as documented above, then cs-config."""
        raise NotImplementedError

    def run_tests(
        self, model: ModelConfig, entry: PublishedTag, source: Path, logger: Logger
    ) -> None:
        """The model's pytest suite inside the environment; StepFailed with its output if red."""
        raise NotImplementedError

    def get_version(self, entry: PublishedTag, logger: Logger) -> str:
        """get_version() through the child runner simulations use; StepFailed on failure."""
        raise NotImplementedError

    def discard(self, entry: PublishedTag, logger: Logger) -> None:
        """Remove an environment that failed: it must never serve."""
        raise NotImplementedError

    def registered(self, entry: PublishedTag) -> None:
        """The registry now names `entry`: what marked it as a build in progress can go."""

    def variables(self, model: ModelConfig, entry: PublishedTag) -> JobVariables:
        """This tier's typed job variables for `entry`."""
        return self.variables_model()

    # ---- hooks: how the model's code is called (simulate, inputs) --------------------

    def call_model(
        self,
        model: ModelConfig,
        entry: PublishedTag,
        function: str,
        args: list[Any],
        env: dict[str, str],
    ) -> ModelCall:
        """One call of `cs_config.functions.<function>` for a simulation, bounded by the model
        config (time limit, memory, pids, CPUs, disk, network): in the model sandbox (local), in
        a container of the model's image (docker), in the pod's model container (kubernetes).
        Never raises for the model's faults: they come back as a failed ModelCall."""
        raise NotImplementedError

    def start_early(
        self, model: ModelConfig, entry: PublishedTag, env: dict[str, str]
    ) -> EarlyCaller | None:
        """The simulation's model call, started while the flow still reads its inputs, where a
        start costs enough to hide (a container: the engine's start, the model's import); None
        here: the call starts at its turn."""
        return None

    def warm_model(
        self, model: ModelConfig, entry: PublishedTag, env: dict[str, str], fingerprint: str
    ) -> WarmCaller:
        """A warm process of the model's code for light calls (runtime/warm.py)."""
        raise NotImplementedError

    def render_environment(self, entry: PublishedTag) -> Path | None:
        """The model's environment as a folder on the flow's machine that the thumbnails'
        sandbox may bind read-only (its BokehJS draws its bokeh outputs); None here: bokeh
        outputs get a placeholder (the image's files are not on the flow's machine)."""
        return None

    def after_deploy(self, model: ModelConfig, entry: PublishedTag, logger: Logger) -> None:
        """What a new deployment of the model needs beyond the deployment itself (nothing here)."""


# The tiers by name, imported on first use (the Docker and Kubernetes ones need their SDKs only
# then).
TIERS = {
    "local": "prefect_cs.tiers.local:LocalTier",
    "docker": "prefect_cs.tiers.docker:DockerTier",
    "kubernetes": "prefect_cs.tiers.kubernetes:KubernetesTier",
}


def _tier_class(name: str) -> type[Tier]:
    module, _, cls = TIERS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def get_tier(name: str) -> Tier:
    """The tier called `name` (CS_TIER, PublishedTag.tier)."""
    if name not in TIERS:
        raise InvalidValue(f"unknown tier {name!r}: use one of {', '.join(TIERS)} (CS_TIER)")
    return _tier_class(name)()


def tier_for_pool_type(pool_type: str) -> Tier:
    """The tier whose simulations run on pools of `pool_type` (process, docker, kubernetes)."""
    for name in TIERS:
        cls = _tier_class(name)
        if cls.pool_type == pool_type:
            return cls()
    types = ", ".join(dict.fromkeys(_tier_class(name).pool_type for name in TIERS))
    raise InvalidValue(f"unknown pool type {pool_type!r}: use one of {types}")
