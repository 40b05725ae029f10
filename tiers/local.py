"""The embedded tier's environment: one virtualenv per model and tag, made with uv.

Like a repo2docker build pack, it runs the model's own `install.sh` (or the
model config's install override) and installs its `cs-config` package, cs-kit
and pytest for its tests, plus a copy of the platform's child runner.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path

from prefect_cs.blocks.model_config import ModelConfig, PublishedTag
from prefect_cs.core.settings import get_settings
from prefect_cs.flows.runtime.environment import RUNTIME_DIR, runner_for
from prefect_cs.flows.runtime.model_process import CHILD_SCRIPT, call_model
from prefect_cs.tiers.base import Logger
from prefect_cs.tiers.steps import StepFailed, run_step

TEST_REQUIREMENTS = ["cs-kit==1.16.9", "pytest==9.0.3"]
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def uv() -> list[str]:
    return [sys.executable, "-m", "uv"]


def base_python() -> str:
    """The interpreter the platform runs on, outside of any virtualenv."""
    return getattr(sys, "_base_executable", sys.executable)


def venv_environment(venv: Path) -> dict[str, str]:
    """An activated-virtualenv environment for install scripts, trusting the host's CA bundle."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CS_"))}
    env.update(
        VIRTUAL_ENV=str(venv),
        PATH=f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
    )
    if Path(CA_BUNDLE).exists():
        env.setdefault("PIP_CERT", CA_BUNDLE)
        env.setdefault("SSL_CERT_FILE", CA_BUNDLE)
    env.pop("PYTHONHOME", None)
    return env


def uses_conda(script: str) -> bool:
    return any(line.strip().startswith(("conda ", "mamba ")) for line in script.splitlines())


class VenvBuilder:
    tier = "local"
    pool_type = "process"

    def env_dir(self, model: ModelConfig, tag: str) -> Path:
        """A new folder per build, so a re-publish of a tag never disturbs the one serving."""
        return get_settings().envs_dir / model.owner / model.title / tag / uuid.uuid4().hex[:12]

    def build(self, model: ModelConfig, source: Path, tag: str, logger: Logger) -> PublishedTag:
        venv = self.env_dir(model, tag)
        venv.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._create(model, source, venv, logger)
        except BaseException:
            shutil.rmtree(venv, ignore_errors=True)
            raise
        return PublishedTag(tag=tag, tier=self.tier, python=str(venv / "bin" / "python"))

    def _create(self, model: ModelConfig, source: Path, venv: Path, logger: Logger) -> None:
        cs_config = source / model.cs_config_path
        if not (cs_config / "cs_config").is_dir():
            raise StepFailed(
                f"no cs_config package at {model.cs_config_path}/cs_config in {model.repo_url}@{model.repo_tag}:"
                " set cs_config_path in the model config to the folder holding install.sh and cs_config/"
            )
        run_step(
            "create-venv", uv() + ["venv", "--seed", "--python", base_python(), str(venv)], logger
        )
        self._install_dependencies(model, cs_config, venv, logger)
        python = str(venv / "bin" / "python")
        run_step(
            "install-cs-config",
            uv() + ["pip", "install", "--python", python, str(cs_config), *TEST_REQUIREMENTS],
            logger,
            env=venv_environment(venv),
        )
        runtime = venv / RUNTIME_DIR
        runtime.mkdir()
        shutil.copy2(CHILD_SCRIPT, runtime / CHILD_SCRIPT.name)

    def _install_dependencies(
        self, model: ModelConfig, cs_config: Path, venv: Path, logger: Logger
    ) -> None:
        env = venv_environment(venv)
        override = (model.install_override or "").strip()
        if override.startswith("run:"):
            run_step(
                "install-override",
                ["bash", "-ec", override[4:].strip()],
                logger,
                cwd=cs_config,
                env=env,
            )
            return
        if override:
            requirements = venv / "override-requirements.txt"
            requirements.write_text(override + "\n")
            run_step(
                "install-override",
                uv()
                + [
                    "pip",
                    "install",
                    "--python",
                    str(venv / "bin" / "python"),
                    "-r",
                    str(requirements),
                ],
                logger,
                env=env,
            )
            return
        script = cs_config / "install.sh"
        if not script.exists():
            logger.info(
                "no install.sh in %s: nothing to install before cs-config", model.cs_config_path
            )
            return
        if uses_conda(script.read_text()) and not shutil.which("conda", path=env["PATH"]):
            raise StepFailed(
                f"{model.cs_config_path}/install.sh uses conda, which is not available on the {self.tier} tier."
                " Set install_override in the model config to the pip requirements it needs (one per line),"
                " or to 'run: <command>'."
            )
        run_step(
            "install.sh",
            ["bash", "-e", str(script)],
            logger,
            cwd=cs_config,
            env=env,
            hint="This is the model's own install.sh; fix it or set install_override in the model config.",
        )

    def test(self, model: ModelConfig, entry: PublishedTag, source: Path, logger: Logger) -> None:
        tests = source / model.cs_config_path / "cs_config" / "tests"
        if not tests.is_dir():
            raise StepFailed(
                f"no tests at {model.cs_config_path}/cs_config/tests: a model must ship its test suite"
            )
        env = venv_environment(Path(entry.python).parent.parent)
        run_step(
            "model-tests",
            [entry.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)],
            logger,
            cwd=source / model.cs_config_path,
            env=env,
            timeout=max(600, model.time_limit * 5),
            hint="The model's own tests failed inside its new environment; the previous tag keeps serving.",
        )

    def model_version(self, entry: PublishedTag, logger: Logger) -> str:
        """get_version() through the child runner simulations use; a failure discards the env."""
        call = call_model(
            entry.python, "get_version", [], timeout=120, runner=runner_for(entry.python)
        )
        if not call.ok:
            self.discard(entry, logger)
            raise StepFailed(f"get_version() failed in the new environment: {call.error}")
        return str(call.result)

    def push(self, model: ModelConfig, entry: PublishedTag, logger: Logger) -> PublishedTag:
        logger.info("local virtualenv %s needs no push", Path(entry.python).parent.parent)
        return entry

    def job_variables(self, model: ModelConfig, entry: PublishedTag) -> dict:
        return {}

    def discard(self, entry: PublishedTag, logger: Logger) -> None:
        """Remove an environment whose tests failed: it must never serve."""
        shutil.rmtree(Path(entry.python).parent.parent, ignore_errors=True)
        logger.info("discarded the failed environment of %s", entry.tag)
