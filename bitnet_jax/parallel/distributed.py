"""Multi-process start-up: ``jax.distributed`` configured from flags or environment variables.

Every process of a run calls :func:`initialize` once, before any other JAX call. Settings come from
command-line flags (:func:`add_arguments`), else the ``BITNET_JAX_*`` environment variables (which
:mod:`bitnet_jax.parallel.launch` sets), else defaults. Without a coordinator and a process count it is a
single-process run and nothing happens -- unless ``auto`` is set, which lets JAX detect a managed
cluster (TPU pod slice, SLURM, Open MPI) by itself.

A peer that never starts or dies makes JAX's coordination service abort the survivors (SIGABRT) once
``initialization_timeout`` / ``heartbeat_timeout`` seconds pass; the launcher turns that into one
clear error. Processes other than 0 first wait for the coordinator's port and raise
:class:`DistributedError` naming it when it never opens.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import sys
import time
from typing import Mapping

from bitnet_jax.config._validate import Validated
from bitnet_jax.errors import ConfigError, DistributedError

ENV = {
    "coordinator_address": "BITNET_JAX_COORDINATOR",
    "num_processes": "BITNET_JAX_NUM_PROCESSES",
    "process_id": "BITNET_JAX_PROCESS_ID",
    "initialization_timeout": "BITNET_JAX_INIT_TIMEOUT",
    "heartbeat_timeout": "BITNET_JAX_HEARTBEAT_TIMEOUT",
    "bind_coordinator": "BITNET_JAX_BIND_COORDINATOR",
    "auto": "BITNET_JAX_DISTRIBUTED_AUTO",
}


@dataclasses.dataclass(frozen=True)
class DistributedConfig(Validated):
    """Where the coordinator is, how many processes there are, which one this is, and the timeouts."""

    coordinator_address: str | None = None  # "host:port" of process 0
    num_processes: int | None = None
    process_id: int | None = None
    initialization_timeout: int = 300  # seconds to wait for every peer to register
    heartbeat_timeout: int = 100  # seconds without a heartbeat before a peer counts as dead
    bind_coordinator: bool = False  # process 0 binds only coordinator_address (loopback runs)
    auto: bool = False  # let JAX detect a managed cluster (TPU pod, SLURM, MPI)

    def validate(self) -> None:
        """Positive timeouts and counts, a process id below the count, ``host:port``."""
        for name in ("initialization_timeout", "heartbeat_timeout"):
            self.need(getattr(self, name) >= 1, name, "must be a positive number of seconds")
        self.need(self.num_processes is None or self.num_processes >= 1, "num_processes", "must be a positive integer")
        self.need(self.process_id is None or self.process_id >= 0, "process_id", "must be a non-negative integer")
        if self.process_id is not None and self.num_processes is not None:
            self.need(self.process_id < self.num_processes, "process_id",
                      f"must be below num_processes ({self.num_processes})")
        if self.coordinator_address is not None:
            host, _, port = self.coordinator_address.rpartition(":")
            self.need(bool(host) and port.isdigit(), "coordinator_address", "must be 'host:port'")

    @property
    def is_multiprocess(self) -> bool:
        """True when more than one process takes part (or a cluster is auto-detected)."""
        return self.auto or (self.num_processes or 1) > 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "DistributedConfig":
        """Read the ``BITNET_JAX_*`` variables; errors name the variable at fault."""
        environ = os.environ if environ is None else environ
        fields = {}
        for field, var in ENV.items():
            raw = environ.get(var)
            if raw is None or raw == "":
                continue
            if field == "coordinator_address":
                fields[field] = raw
            elif field in ("bind_coordinator", "auto"):
                if raw.lower() not in ("0", "1", "true", "false"):
                    raise ConfigError(f"${var} must be 0/1/true/false, got {raw!r}")
                fields[field] = raw.lower() in ("1", "true")
            else:
                try:
                    fields[field] = int(raw)
                except ValueError:
                    raise ConfigError(f"${var} must be an integer, got {raw!r}") from None
        try:
            return cls(**fields)
        except ConfigError as e:
            raise ConfigError(f"environment ({', '.join(ENV[f] for f in fields)}): {e}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``--coordinator/--num-processes/--process-id/--init-timeout/--heartbeat-timeout`` flags."""
    g = parser.add_argument_group("multi-process (default: $BITNET_JAX_* variables, else one process)")
    g.add_argument("--coordinator", dest="coordinator_address", default=None, help="host:port of process 0")
    g.add_argument("--num-processes", type=int, default=None)
    g.add_argument("--process-id", type=int, default=None)
    g.add_argument("--init-timeout", dest="initialization_timeout", type=int, default=None, help="seconds")
    g.add_argument("--heartbeat-timeout", dest="heartbeat_timeout", type=int, default=None, help="seconds")


def config_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> DistributedConfig:
    """Flags override the environment, which overrides the defaults."""
    base = DistributedConfig.from_env(environ)
    changes = {
        f: getattr(args, f)
        for f in ("coordinator_address", "num_processes", "process_id", "initialization_timeout", "heartbeat_timeout")
        if getattr(args, f, None) is not None
    }
    try:
        return dataclasses.replace(base, **changes)
    except ConfigError as e:
        raise ConfigError(f"command-line flags: {e}") from None


def wait_for_port(address: str, timeout: float) -> None:
    """Block until ``host:port`` accepts TCP connections, or raise :class:`DistributedError`."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise DistributedError(
                    f"the coordinator {address} (process 0) did not open within {timeout:g} s; "
                    "is process 0 running and the address right?"
                ) from None
            time.sleep(0.1)


def initialize(config: DistributedConfig | None = None) -> DistributedConfig:
    """Start ``jax.distributed`` for this process (a no-op for a single-process run); returns the config."""
    import jax

    config = DistributedConfig.from_env() if config is None else config
    if not config.is_multiprocess:
        return config
    if config.auto and config.coordinator_address is None:
        jax.distributed.initialize(
            initialization_timeout=config.initialization_timeout,
            heartbeat_timeout_seconds=config.heartbeat_timeout,
        )
        return config
    missing = [f for f in ("coordinator_address", "num_processes", "process_id") if getattr(config, f) is None]
    if missing:
        raise ConfigError(
            f"a {config.num_processes}-process run needs {missing} "
            f"(flags --coordinator/--num-processes/--process-id or ${'/$'.join(ENV[f] for f in missing)})"
        )
    print(
        f"[bitnet-jax] process {config.process_id}/{config.num_processes}: coordinator "
        f"{config.coordinator_address}, init timeout {config.initialization_timeout} s, "
        f"heartbeat timeout {config.heartbeat_timeout} s",
        file=sys.stderr,
        flush=True,
    )
    if config.process_id != 0:
        wait_for_port(config.coordinator_address, config.initialization_timeout)
    bind = config.coordinator_address if (config.bind_coordinator and config.process_id == 0) else None
    jax.distributed.initialize(
        coordinator_address=config.coordinator_address,
        num_processes=config.num_processes,
        process_id=config.process_id,
        initialization_timeout=config.initialization_timeout,
        heartbeat_timeout_seconds=config.heartbeat_timeout,
        coordinator_bind_address=bind,
    )
    return config
