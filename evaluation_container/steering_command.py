"""Turn a steering command into what an executor runs, the way iDDS runs it.

Three forms (:func:`phpo.schemas.upstream.steering_form`):

- the shell form (phpo's own): the command, placeholders filled in, run by ``bash -c`` in the
  working directory on the agent;
- the docker-arguments form (upstream's default: iDDS runs ``docker ARGS``): ``run --rm -v
  "$(pwd)":/X IMAGE CMD...``. The host shell's part is done here as upstream's host shell
  does it: ``bash`` expands the string in the working directory (``$(pwd)``, ``$PWD``,
  quotes), then the ``docker run`` options are read and the container is started through the
  agent's container runtime;
- ``--steeringContainer IMAGE``: upstream's ``docker run --rm -v $(pwd):WORKDIR IMAGE CMD``,
  i.e. the docker-arguments form built by :func:`phpo.schemas.upstream.container_run_args`.

Only the working directory (or a directory inside it) may be mounted: a steering container
never sees the agent's own files.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from phpo.schemas.upstream import (
    CONTAINER,
    DOCKER_ARGS,
    container_run_args,
    steering_form,
    substitute_placeholders,
    steering_values,
)

from .runners.base import ExecutorError, RunSpec
from .runners.subprocess import command_env

# docker run options phpo reads; the other known ones are accepted and left to the agent
_WITH_VALUE_USED = {"-v", "--volume", "-e", "--env", "-w", "--workdir", "--entrypoint"}
_WITH_VALUE_IGNORED = {
    "--name",
    "-u",
    "--user",
    "--network",
    "--net",
    "--gpus",
    "--shm-size",
    "--ipc",
    "-m",
    "--memory",
    "--cpus",
    "--hostname",
    "-h",
    "--label",
    "-l",
    "--platform",
    "--pull",
    "--runtime",
    "--security-opt",
    "--ulimit",
    "--cap-add",
    "--cap-drop",
    "--add-host",
    "--dns",
    "--log-driver",
    "--log-opt",
    "--stop-signal",
    "--stop-timeout",
    "--pid",
    "--uts",
    "--userns",
    "--cgroupns",
    "--env-file",
    "--cpuset-cpus",
    "--memory-swap",
    "--group-add",
    "--tmpfs",
    "--mount",
    "--device",
    "-p",
    "--publish",
}
_FLAGS = {
    "--rm",
    "-i",
    "--interactive",
    "-t",
    "--tty",
    "-d",
    "--detach",
    "--init",
    "--privileged",
    "--read-only",
    "-q",
    "--quiet",
    "--no-healthcheck",
    "--sig-proxy",
}


@dataclass
class DockerRun:
    """A ``docker run`` command line, read."""

    image: str
    argv: list[str]
    mounts: dict[str, str] = field(default_factory=dict)  # host -> container
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    entrypoint: list[str] | None = None
    ignored: list[str] = field(default_factory=list)


def expand_like_a_shell(args: str, cwd: Path, env: dict[str, str], timeout: float = 60.0) -> list[str]:
    """The words ``bash`` makes of ``args`` in ``cwd``: what upstream's host shell passes to
    ``docker``. Expansions (``$(pwd)``, ``$PWD``, ``${VAR}``) happen as they would there."""
    script = "printf '%s\\0' " + args
    try:
        p = subprocess.run(
            ["bash", "-c", script],
            cwd=cwd,
            env=env,
            capture_output=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise ExecutorError(
            f"cannot read the steering command's docker arguments: {e}", retryable=False
        ) from e
    if p.returncode != 0:
        raise ExecutorError(
            "the steering command's docker arguments are not a valid shell command line: "
            + p.stderr.decode(errors="replace")[-2000:],
            retryable=False,
        )
    words = p.stdout.decode(errors="replace").split("\0")
    return words[:-1] if words and words[-1] == "" else words


def parse_docker_run(words: list[str], workdir: Path) -> DockerRun:
    """Read ``run [OPTIONS] IMAGE [COMMAND...]``. Mount sources must be the working directory
    or inside it; an option phpo does not know is an error naming it."""
    if words[:1] != ["run"]:
        raise ExecutorError(
            f"a docker-style steering command must start with 'run', got {words[:1]}", retryable=False
        )
    root = workdir.resolve()
    run = DockerRun(image="", argv=[])
    i = 1
    while i < len(words):
        w = words[i]
        if not w.startswith("-") or w == "-":
            run.image = w
            run.argv = words[i + 1 :]
            return run
        name, eq, inline = w.partition("=")
        if name in _FLAGS or (
            not eq and len(w) > 2 and w[0] == "-" and w[1] != "-" and all(f"-{c}" in _FLAGS for c in w[1:])
        ):
            i += 1
            continue
        if name not in _WITH_VALUE_USED | _WITH_VALUE_IGNORED:
            raise ExecutorError(
                f"docker run option {name!r} is not known to phpo; remove it from the steering command",
                retryable=False,
            )
        if eq:
            value = inline
            i += 1
        else:
            if i + 1 >= len(words):
                raise ExecutorError(f"docker run option {name!r} needs a value", retryable=False)
            value = words[i + 1]
            i += 2
        if name in ("-v", "--volume"):
            src, _, rest = value.partition(":")
            dst = rest.split(":", 1)[0]
            if not src or not dst:
                raise ExecutorError(f"cannot read the mount {value!r}; expected SRC:DST", retryable=False)
            host = Path(src).resolve()
            if host != root and root not in host.parents:
                raise ExecutorError(
                    f'the steering container may mount only its working directory ("$(pwd)" '
                    f"or a directory in it), not {src!r}",
                    retryable=False,
                )
            run.mounts[str(host)] = dst
        elif name in ("-e", "--env"):
            k, has, v = value.partition("=")
            if has:
                run.env[k] = v
            elif k in os.environ:
                run.env[k] = os.environ[k]
        elif name in ("-w", "--workdir"):
            run.workdir = value
        elif name == "--entrypoint":
            run.entrypoint = [value] if value else []
        else:
            run.ignored.append(name)
    raise ExecutorError(
        "the docker-style steering command names no image ('run [OPTIONS] IMAGE ...')", retryable=False
    )


def prepare(spec: RunSpec, command: str, container: str | None, num_points: int, max_points: int) -> str:
    """Fill ``spec`` (its ``workdir``, ``env`` and streams already set) for this steering command;
    returns the form. The shell form sets ``spec.command``; the docker forms set the image,
    the argv and the mounts of the container."""
    values = steering_values(num_points, max_points)
    form = steering_form(command, container)
    filled = substitute_placeholders(command, values)
    if form not in (CONTAINER, DOCKER_ARGS):
        spec.command = filled
        return form
    args = container_run_args(container or "", filled) if form == CONTAINER else filled
    # the host-shell step sees what a local payload would: the agent's environment less its
    # credentials, plus the job's values
    words = expand_like_a_shell(args, spec.workdir, command_env(spec))
    run = parse_docker_run(words, spec.workdir)
    spec.command = " ".join(words)
    spec.image = run.image
    spec.argv = run.argv
    spec.entrypoint = run.entrypoint
    spec.mounts = run.mounts
    spec.container_workdir = run.workdir
    spec.env = {**spec.env, **run.env}
    return form
