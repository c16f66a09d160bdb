"""Several processes on the engine JAX ships: ``jax.distributed`` with a coordinator.

* :func:`initialize` checks its arguments and starts ``jax.distributed`` (every process of a
  run calls it with the same coordinator and process count and its own id). Without arguments
  it lets JAX detect a cluster (SLURM, Open MPI, Kubernetes, TPU pods).
* :func:`initialize_from_env` does the same from the variables that :func:`launch_local` sets.
* :func:`launch_local` runs one command as P local processes (``ntk-ode ... --processes P``):
  it picks a free port on 127.0.0.1, starts them, and stops them all when one fails.
* :func:`split` gives a process its share of a list of work items (tiles, seeds).

After initialization, ``jax.process_index()`` and ``jax.process_count()`` say who is who, and
``jax.experimental.multihost_utils`` synchronises; :func:`ntk_ode.tiles.kernel_to_disk` and
:func:`ntk_ode.sweep.width_sweep` use them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import TypeVar

import jax

from ._checks import positive_int

ENV_COORDINATOR = "NTK_ODE_COORDINATOR"
ENV_NUM_PROCESSES = "NTK_ODE_NUM_PROCESSES"
ENV_PROCESS_ID = "NTK_ODE_PROCESS_ID"
ENV_TIMEOUT = "NTK_ODE_COORDINATOR_TIMEOUT"
MAX_TIMEOUT_S = 7 * 24 * 3600  # a week: longer waits are a typo (and huge values fail inside jaxlib)

T = TypeVar("T")


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout_s: int = 60,
) -> None:
    """Start ``jax.distributed`` for this process (call before any other JAX work).

    With no arguments JAX detects the cluster (for example under ``srun`` on SLURM).

    Args:
        coordinator: ``host:port`` of process 0's coordinator.
        num_processes: the number of processes (>= 1).
        process_id: this process's id, in ``[0, num_processes)``.
        timeout_s: how long to wait for all processes to join; after that JAX stops the process
            with a "Deadline Exceeded" message (it cannot be caught in Python).

    Raises:
        ValueError: inconsistent or out-of-range arguments.
        TimeoutError: (process_id > 0) no coordinator accepts connections within ``timeout_s``.
    """
    given = [v is not None for v in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError("coordinator, num_processes and process_id must be given together (or none of them)")
    if isinstance(timeout_s, bool) or int(timeout_s) != timeout_s or not 1 <= timeout_s <= MAX_TIMEOUT_S:
        raise ValueError(
            f"timeout_s (the coordinator timeout, {ENV_TIMEOUT}) must be a whole number of seconds in "
            f"[1, {MAX_TIMEOUT_S}], got {timeout_s!r}"
        )
    if all(given):
        assert num_processes is not None and process_id is not None and coordinator is not None
        positive_int("num_processes", num_processes)
        if isinstance(process_id, bool) or int(process_id) != process_id or not 0 <= process_id < num_processes:
            raise ValueError(f"process_id must be an integer in [0, {num_processes}), got {process_id!r}")
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"coordinator must be 'host:port', got {coordinator!r}")
        if process_id != 0:
            wait_for_coordinator(host, int(port), timeout_s)
        print(
            f"ntk_ode: process {process_id} of {num_processes} joining the coordinator {coordinator}; "
            f"if not all {num_processes} processes join within {timeout_s} s, JAX stops this process "
            f"with 'Deadline Exceeded' (set {ENV_TIMEOUT} to wait longer)",
            file=sys.stderr,
            flush=True,
        )
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=int(num_processes),
            process_id=int(process_id),
            initialization_timeout=int(timeout_s),
        )
    else:
        jax.distributed.initialize(initialization_timeout=int(timeout_s))


def wait_for_coordinator(host: str, port: int, timeout_s: float) -> None:
    """Wait until the coordinator accepts connections (process 0 starts it).

    Args:
        host: the coordinator's host.
        port: its port.
        timeout_s: how long to keep trying.

    Raises:
        TimeoutError: nothing accepted a connection at ``host:port`` within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"no coordinator at {host}:{port} after {timeout_s} s ({e}): is process 0 running, "
                    f"and is {ENV_COORDINATOR} (or the coordinator argument) the same on every process?"
                ) from e
            time.sleep(0.2)


def initialize_from_env() -> bool:
    """Start ``jax.distributed`` if :func:`launch_local` started this process.

    Returns:
        Whether it was started.

    Raises:
        ValueError: the variables are incomplete or malformed.
    """
    coordinator = os.environ.get(ENV_COORDINATOR)
    if not coordinator:
        return False
    values = {}
    for name, default in ((ENV_NUM_PROCESSES, None), (ENV_PROCESS_ID, None), (ENV_TIMEOUT, "60")):
        raw = os.environ.get(name, default)
        try:
            values[name] = int(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            what = "a whole number of seconds" if name == ENV_TIMEOUT else "an integer"
            raise ValueError(f"{ENV_COORDINATOR} is set, so {name} must be {what}, got {raw!r}") from None
    initialize(coordinator, values[ENV_NUM_PROCESSES], values[ENV_PROCESS_ID], timeout_s=values[ENV_TIMEOUT])
    return True


def split(items: Sequence[T], index: int | None = None, count: int | None = None) -> list[T]:
    """Process ``index``'s share of ``items``: every ``count``-th item from position ``index``.

    Args:
        items: the work items, in the same order on every process.
        index: the process (default ``jax.process_index()``).
        count: the number of processes (default ``jax.process_count()``).

    Returns:
        The items ``items[k]`` with ``k % count == index``.
    """
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    if not 0 <= index < count:
        raise ValueError(f"index must be in [0, count={count}), got {index!r}")
    return [v for k, v in enumerate(items) if k % count == index]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now.

    Returns:
        The port number.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_local(
    argv: Sequence[str], processes: int, *, timeout_s: int = 60, python: str | None = None, force: bool = False
) -> int:
    """Run ``python -m ntk_ode.cli *argv`` as ``processes`` local processes under jax.distributed.

    Each process gets the coordinator address, the process count and its id in the environment
    (:func:`initialize_from_env`). Output goes to this terminal; process 0 shows the progress.
    When one process fails the others are stopped.

    Args:
        argv: the command line after ``ntk-ode`` (without ``--processes``).
        processes: how many processes (>= 1).
        timeout_s: the coordinator's wait for all processes to join.
        python: the interpreter (default this one).
        force: allow more than 4 processes per local CPU core.

    Returns:
        0 if all succeeded; else the exit status of the first process that failed, or 2 if it
        was killed by a signal. Every process is watched, so a dead one stops the others at once
        (within 0.2 s), and the message names it (a process JAX stopped because the others never
        joined exits with a "Deadline Exceeded" message).

    Raises:
        ValueError: ``processes`` is not a positive integer, or above 4 per CPU core without
            ``force``.
        OSError: a process could not be started (those already started are stopped first).
    """
    processes = positive_int("processes", processes)
    cap = 4 * (os.cpu_count() or 1)
    if processes > cap and not force:
        raise ValueError(
            f"processes={processes} exceeds 4 per local CPU core ({cap}); each process holds a JAX runtime. "
            "Pass force=True if you mean it"
        )
    env = dict(os.environ)
    env[ENV_COORDINATOR] = f"127.0.0.1:{free_port()}"
    env[ENV_NUM_PROCESSES] = str(processes)
    env[ENV_TIMEOUT] = str(int(timeout_s))
    procs: list[subprocess.Popen] = []
    try:
        for i in range(int(processes)):
            env_i = dict(env, **{ENV_PROCESS_ID: str(i)})
            procs.append(subprocess.Popen([python or sys.executable, "-m", "ntk_ode.cli", *argv], env=env_i))
    except OSError as e:
        stop_all(procs)
        raise OSError(
            e.errno, f"could not start process {len(procs)} of {processes} ({e}); the others were stopped"
        ) from e
    dead = None  # (process id, exit status) of the first process that failed
    try:
        while dead is None:
            codes = [p.poll() for p in procs]  # every process, every round (a dead one is seen at once)
            dead = next(((i, c) for i, c in enumerate(codes) if c not in (None, 0)), None)
            if dead is None and all(c == 0 for c in codes):
                break
            time.sleep(0.2)
    finally:
        stop_all(procs)
    if dead is None:
        return 0
    i, code = dead
    print(f"ntk-ode: {describe_exit(i, processes, code)}; the other processes were stopped", file=sys.stderr)
    return 2 if code < 0 else int(code)


def stop_all(procs: Sequence[subprocess.Popen], grace_s: float = 5.0) -> None:
    """Stop the processes still running: SIGTERM, then SIGKILL after ``grace_s`` seconds.

    (A process in ``jax.distributed`` handles SIGTERM as a preemption notice and keeps running
    until its coordinator's heartbeat fails, which takes minutes; so the grace period is short.)

    Args:
        procs: the processes.
        grace_s: how long to wait for them to end after SIGTERM.
    """
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def describe_exit(process_id: int, processes: int, code: int) -> str:
    """``"process i of n exited with status s"``, or ``"... was killed by signal SIGKILL"``.

    Args:
        process_id: the process's id.
        processes: the number of processes.
        code: its exit status (``subprocess``'s: negative for a signal).

    Returns:
        The phrase.
    """
    if code >= 0:
        return f"process {process_id} of {processes} exited with status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = str(-code)
    return f"process {process_id} of {processes} was killed by signal {name}"
