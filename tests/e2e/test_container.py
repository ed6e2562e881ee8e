"""Issue 7: the Dockerfile's command line and environment, run outside Docker, as a CI sidecar."""

from __future__ import annotations

import base64
import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.cli_process import ServeProcess, free_port
from tests.support.fake_gitlab import FakeGitLab
from tests.support.harness import clean_env, pip_install, run

DOCKERFILE = Path(__file__).parents[2] / "Dockerfile"
README = Path(__file__).parents[2] / "README.md"
VENV_IN_IMAGE = "/opt/venv/bin"
JOB_TOKEN = "glcbt-64_job-token-of-this-ci-job"
# What the image must set; this test itself binds loopback only.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104


@dataclass
class Stage:
    """The instructions of one build stage, continuation lines joined, comments dropped."""

    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, name: str) -> list[str]:
        return [args for instruction, args in self.instructions if instruction == name]

    def last(self, name: str) -> str:
        found = self.all(name)
        assert found, f"the final stage has no {name}"
        return found[-1]

    def env(self, inherited: dict[str, str]) -> dict[str, str]:
        """ENV KEY=value pairs in order, `$NAME` expanded from what came before."""
        env: dict[str, str] = {}
        for args in self.all("ENV"):
            pairs = [token.partition("=") for token in shlex.split(args)]
            before = {**inherited, **env}
            for key, eq, value in pairs:
                assert eq, f"ENV {args!r}: use the KEY=value form"
                for name, known in before.items():
                    value = value.replace(f"${name}", known).replace(f"${{{name}}}", known)
                env[key] = value
        return env


def parse_dockerfile(text: str) -> list[Stage]:
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for entry in logical:
        instruction, _, args = entry.strip().partition(" ")
        if instruction.upper() == "FROM":
            stages.append(Stage(args.split()[0]))
        else:
            stages[-1].instructions.append((instruction.upper(), args.strip()))
    return stages


def readme_ci_variables() -> list[tuple[str, str]]:
    """The job `variables:` of the README's .gitlab-ci.yml example."""
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.DOTALL)
    assert len(blocks) == 1, "the README carries exactly one .gitlab-ci.yml example"
    section = re.search(r"\n  variables:\n((?:    \S.*\n)+)", blocks[0])
    assert section is not None
    return [
        (key.strip(), value.strip())
        for key, _, value in (line.partition(":") for line in section.group(1).splitlines())
    ]


def exec_form(args: str) -> list[str]:
    """ENTRYPOINT/CMD/HEALTHCHECK CMD must be JSON arrays: signals then reach the proxy."""
    parsed = json.loads(args)
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed), args
    return parsed


def test_the_image_is_small_non_root_and_configured_by_env_alone() -> None:
    stages = parse_dockerfile(DOCKERFILE.read_text())
    assert len(stages) >= 2, "multi-stage: build tools stay out of the runtime image"
    final = stages[-1]
    assert final.base.startswith("python:") and final.base.endswith("-slim")
    user = final.last("USER").split(":")[0]
    assert user not in ("root", "0")
    assert json.loads(final.last("VOLUME")) == ["/cache"]
    assert final.last("EXPOSE") == "8080"
    env = final.env({"PATH": "/usr/local/bin:/usr/bin:/bin"})
    # Set by the image itself, not left to the program's loopback default.
    assert env["GITLAB_PYPI_PROXY_SERVER_HOST"] == ALL_INTERFACES
    assert env["GITLAB_PYPI_PROXY_CACHE_DIR"] == "/cache"
    assert env["PATH"].startswith(VENV_IN_IMAGE + ":")
    assert not final.all("COPY") or all("--from=" in c for c in final.all("COPY"))
    healthcheck = final.last("HEALTHCHECK")
    assert "/-/health" in healthcheck
    assert not [a for a in final.all("ARG") if "TOKEN" in a.upper()]
    # The build stage has what `pip install .` needs: the metadata, the readme it names, the code.
    copied = " ".join(" ".join(stage.all("COPY")) for stage in stages[:-1]).split()
    assert {"pyproject.toml", "README.md", "proxy"} <= set(copied)


async def test_the_image_command_line_serves_as_a_ci_sidecar(
    gitlab: FakeGitLab, tmp_path: Path
) -> None:
    """ENTRYPOINT + CMD with the image's ENV, in a CI job's environment, no proxy config."""
    final = parse_dockerfile(DOCKERFILE.read_text())[-1]
    venv_bin = str(Path(sys.executable).parent)
    host_env = clean_env()
    image_env = final.env({"PATH": host_env["PATH"]})
    assert image_env["GITLAB_PYPI_PROXY_SERVER_HOST"] == ALL_INTERFACES
    port = free_port()
    cache = tmp_path / "cache"
    image_env.update(
        # This machine's stand-ins for the image's paths; tests bind loopback only.
        PATH=image_env["PATH"].replace(VENV_IN_IMAGE, venv_bin),
        GITLAB_PYPI_PROXY_CACHE_DIR=str(cache),
        GITLAB_PYPI_PROXY_SERVER_PORT=str(port),
        GITLAB_PYPI_PROXY_SERVER_HOST="127.0.0.1",
    )
    # What a GitLab CI service container sees: the job's public variables, so CI_SERVER_URL and
    # the README's job variables, expanded, but not CI_JOB_TOKEN itself.
    gitlab.job_tokens.add(JOB_TOKEN)
    job_variables = {
        key: value.replace("$CI_JOB_TOKEN", JOB_TOKEN) for key, value in readme_ci_variables()
    }
    assert "CI_JOB_TOKEN" not in job_variables
    env = {**host_env, **image_env, **job_variables, "CI_SERVER_URL": gitlab.url}
    argv = exec_form(final.last("ENTRYPOINT")) + exec_form(final.last("CMD"))
    workdir = tmp_path / "work"
    workdir.mkdir()
    proxy = await ServeProcess.start(argv, port=port, env=env, cwd=workdir, ready="/-/ready")
    try:
        health = exec_form(final.last("HEALTHCHECK").partition("CMD")[2].strip())
        assert (await run(health, env=env, timeout=30)).returncode == 0

        gitlab.add_wheel(42, "corp-util", "1.0.0")
        target = tmp_path / "site"
        index = job_variables["PIP_INDEX_URL"].replace("http://pypi-proxy:8080", proxy.url)
        (await pip_install(index.replace("my-group", "platform"), target, "corp-util")).check()
        assert (target / "corp_util-1.0.0.dist-info").is_dir()
        upstream = [r for r in gitlab.requests if r.kind in ("page", "file")]
        credentials = base64.b64encode(f"gitlab-ci-token:{JOB_TOKEN}".encode()).decode()
        assert upstream
        assert all(r.headers["Authorization"] == f"Basic {credentials}" for r in upstream)
        assert gitlab.counts["unauthorized"] == 0
        assert (cache / "index.sqlite3").exists()
        assert JOB_TOKEN not in proxy.log()
    finally:
        assert await proxy.stop() == 0
    assert [p.name for p in workdir.iterdir()] == [proxy.log_path.name], (
        "it wrote outside its cache"
    )
    # Stopped by SIGTERM, as `docker stop` does.
    assert "stopped" in proxy.log()
