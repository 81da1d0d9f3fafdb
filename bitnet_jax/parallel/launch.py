"""Start N local processes of one command on loopback for multi-process development and tests.

Each child gets the ``BITNET_JAX_*`` variables :func:`bitnet_jax.parallel.distributed.initialize` reads (a fresh
127.0.0.1 port, the process count and its id) and, with ``devices_per_process``, that many simulated CPU
devices. The launcher watches the children: when one fails, the others are stopped and the run ends
with an error naming the process and its exit status; a run longer than ``timeout`` is stopped too.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import time
from typing import Mapping, Sequence

from bitnet_jax.errors import DistributedError
from bitnet_jax.parallel.distributed import ENV

POLL_S = 0.05
GRACE_S = 5.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _describe(code: int) -> str:
    if code in (134, -signal.SIGABRT):
        return f"aborted (status {code}, SIGABRT: JAX's coordination service lost or never reached a peer)"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


@dataclasses.dataclass(frozen=True)
class LaunchResult:
    """Exit codes by process id and the wall time of the run."""

    returncodes: tuple[int, ...]
    seconds: float


def child_env(
    process_id: int,
    num_processes: int,
    port: int,
    devices_per_process: int | None = None,
    init_timeout: int | None = None,
    heartbeat_timeout: int | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of local process ``process_id``."""
    env = dict(os.environ if base is None else base)
    env[ENV["coordinator_address"]] = f"127.0.0.1:{port}"
    env[ENV["num_processes"]] = str(num_processes)
    env[ENV["process_id"]] = str(process_id)
    env[ENV["bind_coordinator"]] = "1"
    if init_timeout is not None:
        env[ENV["initialization_timeout"]] = str(init_timeout)
    if heartbeat_timeout is not None:
        env[ENV["heartbeat_timeout"]] = str(heartbeat_timeout)
    if devices_per_process is not None:
        flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
        env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices_per_process}"])
        env.setdefault("JAX_PLATFORMS", "cpu")
    return env


def _stop(procs: Sequence[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + GRACE_S
    for p in procs:
        try:
            p.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch(
    command: Sequence[str],
    num_processes: int,
    *,
    devices_per_process: int | None = None,
    timeout: float | None = None,
    init_timeout: int | None = None,
    heartbeat_timeout: int | None = None,
    port: int | None = None,
) -> LaunchResult:
    """Run ``command`` as ``num_processes`` local processes; raise :class:`DistributedError` if one fails."""
    if num_processes < 1:
        raise DistributedError(f"num_processes must be at least 1, got {num_processes}")
    if not command:
        raise DistributedError("no command to launch")
    port = port or free_port()
    start = time.monotonic()
    procs = [
        subprocess.Popen(
            list(command),
            env=child_env(i, num_processes, port, devices_per_process, init_timeout, heartbeat_timeout),
        )
        for i in range(num_processes)
    ]
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                i, code = failed[0]
                _stop(procs)
                raise DistributedError(
                    f"process {i} of {num_processes} {_describe(code)} after {time.monotonic() - start:.1f} s; "
                    f"stopped the other processes (command: {' '.join(command)})"
                )
            if all(c == 0 for c in codes):
                return LaunchResult(tuple(codes), time.monotonic() - start)
            if timeout is not None and time.monotonic() - start > timeout:
                running = [i for i, c in enumerate(codes) if c is None]
                _stop(procs)
                raise DistributedError(
                    f"the run exceeded its {timeout:g} s timeout; processes {running} were still running and "
                    "have been stopped"
                )
            time.sleep(POLL_S)
    except BaseException:
        _stop(procs)
        raise
