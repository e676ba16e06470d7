"""Upstream conventions shared by the CLI, the server and the agent: how PanDA/iDDS fill in the
placeholders of a command, the file names a steering command sees, and the forms a steering
command comes in.
"""

from __future__ import annotations

import shlex

MAX_POINTS, NUM_POINTS, IN, OUT = "%MAX_POINTS", "%NUM_POINTS", "%IN", "%OUT"
SEGMENT_NAME = "%SEGMENT_NAME"
STEERING_PLACEHOLDERS = (MAX_POINTS, NUM_POINTS, IN, OUT)
EVALUATION_PLACEHOLDERS = (SEGMENT_NAME,)

# the names iDDS gives the steering's files in its working directory (%IN / %OUT)
STEERING_IN = "idds_input.json"
STEERING_OUT = "output.json"

# the loss iDDS is handed for a point whose every attempt failed, unless --penaltyLoss says
# otherwise (PanDA reports 1e5 to iDDS, which stores it as a float): a steering that counts
# the not-yet-evaluated points (loss null) as pending would otherwise wait for it forever
UPSTREAM_FAILED_LOSS = 100000.0

# the form of a steering command (see :func:`steering_form`)
SHELL, DOCKER_ARGS, CONTAINER = "shell", "docker-args", "container"


def substitute_placeholders(command: str, values: dict[str, str]) -> str:
    """Replace each placeholder wherever it appears in ``command``, as plain text, the way iDDS
    and PanDA do it: inside quotes, glued to other text (``--max_points=%MAX_POINTS``,
    ``$PWD/%IN``), inside ``/bin/bash -c "..."``. Nothing is quoted: the values are numbers,
    fixed file names and segment names, which need no quoting. ``values`` is applied in its
    order (upstream's: ``%MAX_POINTS``, ``%NUM_POINTS``, ``%IN``, ``%OUT``)."""
    for key, value in values.items():
        command = command.replace(key, value)
    return command


def steering_values(num_points: int, max_points: int) -> dict[str, str]:
    """The steering placeholders' values for one iteration, in upstream's order."""
    return {MAX_POINTS: str(max_points), NUM_POINTS: str(num_points), IN: STEERING_IN, OUT: STEERING_OUT}


def evaluation_command(command: str, segment_name: str) -> str:
    """``evaluationExec`` of a job: ``%SEGMENT_NAME`` becomes its segment's name (the empty
    string for a task without segments). Done once, by the server when it hands out a job
    (and by ``phpo run-local``, which has no server); the agent runs the command it is given."""
    return substitute_placeholders(command, {SEGMENT_NAME: segment_name})


def steering_form(command: str, container: str | None) -> str:
    """How a steering command is run.

    - ``CONTAINER``: ``--steeringContainer IMAGE`` is given; upstream runs
      ``docker run --rm -v $(pwd):WORKDIR IMAGE COMMAND``.
    - ``DOCKER_ARGS``: no container, and the command is docker's arguments, as upstream hands
      the string to ``docker`` (the documented ``run --rm -v "$(pwd)":/X IMAGE CMD...``).
    - ``SHELL``: anything else, phpo's own form: a shell command run on the agent as it is.
    """
    if container:
        return CONTAINER
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    return DOCKER_ARGS if words[:1] == ["run"] else SHELL


def needs_container_runtime(command: str | None, container: str | None) -> bool:
    """Whether running this steering command needs a container runtime on the agent."""
    return bool(command) and steering_form(command or "", container) != SHELL


def container_image(name: str) -> str:
    """An image name as a Docker-API engine knows it: upstream writes evaluation containers as
    ``docker://registry/image:tag`` (the Singularity style); the engines want the name alone."""
    return name[len("docker://") :] if name.startswith("docker://") else name


def steering_command_line(command: str, container: str | None, num_points: int, max_points: int) -> str:
    """The steering command exactly as an agent runs it for one iteration (``--noSubmit`` shows
    it): the shell form as it is, the docker forms as the ``docker`` command line they stand
    for (the agent runs that through its own container runtime, the working directory being
    ``$(pwd)``)."""
    args = substitute_placeholders(command, steering_values(num_points, max_points))
    form = steering_form(command, container)
    if form == CONTAINER:
        return "docker " + container_run_args(container or "", args)
    if form == DOCKER_ARGS:
        return "docker " + args.strip()
    return args


def container_run_args(image: str, command: str) -> str:
    """``docker run`` arguments of the ``--steeringContainer`` form, as iDDS builds them
    (``run --rm -v $(pwd):WORKDIR IMAGE COMMAND``). WORKDIR is the working directory's own path,
    also the container's working directory, so bare ``%IN``, ``$PWD/%IN`` and ``$(pwd)/%IN``
    all name the same file inside and outside the container."""
    return f'run --rm -v "$(pwd)":"$(pwd)" -w "$(pwd)" {shlex.quote(image)} {command}'
