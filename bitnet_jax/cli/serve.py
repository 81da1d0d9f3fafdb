"""``bitnet-jax serve``: the OpenAI-compatible HTTP server (FastAPI + uvicorn) over the batching engine."""

from __future__ import annotations

import argparse
import signal
import sys

from bitnet_jax.cli._common import add_model_arguments, load_model
from bitnet_jax.errors import BitNetError


def run(args: argparse.Namespace) -> int:
    """Load the model, compile the engine's programs and serve until SIGTERM / Ctrl-C (then drain, exit 0)."""
    try:
        import uvicorn

        from bitnet_jax.serve.app import build
    except ImportError as e:
        raise BitNetError(f"serve needs the serve extra (pip install 'bitnet-jax[serve]'): {e}") from None
    if not 0 <= args.port <= 65535:
        raise BitNetError(f"--port must be in [0, 65535], got {args.port}")
    model = load_model(args)
    name = args.served_model_name or args.model or "default"
    app, engine = build(model, slots=args.slots, max_queue=args.max_queue, context=args.context,
                        prefill_batch=args.prefill_batch, model_name=name)
    if not args.no_warmup:
        print(f"bitnet-jax serve: compiling ({args.slots} slots, context {engine.context}) ...", file=sys.stderr,
              flush=True)
        engine.warmup()

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # drain: refuse new requests, finish running ones, exit 0
            app.state.draining = True
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            else:
                self.should_exit = True

    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, timeout_keep_alive=5)
    Server(config).run()
    return 0


def add_parser(sub) -> None:
    """Register ``serve``."""
    p = sub.add_parser("serve", help="serve the model over an OpenAI-compatible HTTP API (continuous batching)")
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--slots", type=int, default=8, help="decode slots: requests generated together (default 8)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting for a slot before 429 (default 64)")
    p.add_argument("--context", type=int, default=None,
                   help="tokens per slot, prompt + output (default: the model's context)")
    p.add_argument("--prefill-batch", type=int, default=None,
                   help="prompts of one length bucket prefilled together, at most (default 4; 1: one at a time)")
    p.add_argument("--served-model-name", default=None, help="the model id clients send (default: --model or "
                                                              "'default')")
    p.add_argument("--no-warmup", action="store_true", help="compile on the first requests instead of at start")
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=run)
