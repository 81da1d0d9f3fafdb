"""``bitnet-jax launch``: run one command as N local processes (loopback) for multi-process work."""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    """Run the command as ``-n`` local processes; an error names the process that failed."""
    from bitnet_jax.parallel.launch import launch

    command = args.command_line[1:] if args.command_line[:1] == ["--"] else args.command_line
    result = launch(
        command,
        args.num_processes,
        devices_per_process=args.devices_per_process,
        timeout=args.timeout,
        init_timeout=args.init_timeout,
        heartbeat_timeout=args.heartbeat_timeout,
    )
    print(f"bitnet-jax launch: {args.num_processes} processes finished in {result.seconds:.1f} s", file=sys.stderr)
    return 0


def add_parser(sub) -> None:
    """Register the ``launch`` sub-command."""
    p = sub.add_parser(
        "launch",
        help="run a command as N local processes wired for jax.distributed (loopback)",
        description="Example: bitnet-jax launch -n 2 --devices-per-process 4 -- python my_script.py",
    )
    p.add_argument("-n", "--num-processes", type=int, required=True)
    p.add_argument("--devices-per-process", type=int, default=None, help="simulated CPU devices per process")
    p.add_argument("--timeout", type=float, default=None, help="stop everything after this many seconds")
    p.add_argument("--init-timeout", type=int, default=None, help="jax.distributed initialization timeout (s)")
    p.add_argument("--heartbeat-timeout", type=int, default=None, help="seconds before a silent peer is dead")
    p.add_argument("command_line", nargs=argparse.REMAINDER, help="the command (after --)")
    p.set_defaults(func=run)
