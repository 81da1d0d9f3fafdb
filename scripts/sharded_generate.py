"""Generate with a model sharded over a device mesh, in one process or many (``jax.distributed``).

Usage (one host)::

    python scripts/sharded_generate.py --model DIR --mesh configs/mesh/tensor-parallel.yaml "prompt"

Several processes: add ``--coordinator/--num-processes/--process-id`` (or the ``BITNET_JAX_*``
variables, which ``bitnet-jax launch`` sets); every process runs the same command and process 0 prints.
"""

from __future__ import annotations

import argparse
import sys

from bitnet_jax.parallel import distributed


def main(argv: list[str] | None = None) -> int:
    """Parse flags, start jax.distributed, shard the model, generate, print from process 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompt", help="prompt text (or space-separated token ids for a model without tokenizer)")
    parser.add_argument("--model", required=True, help="model directory or GGUF file")
    parser.add_argument("--mesh", default=None, help="mesh YAML (default: every device on the tensor axis)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    distributed.add_arguments(parser)
    args = parser.parse_args(argv)
    distributed.initialize(distributed.config_from_args(args))

    import jax

    from bitnet_jax import MeshConfig, from_pretrained, generate, make_mesh, shard

    mesh = make_mesh(MeshConfig.from_yaml(args.mesh) if args.mesh else MeshConfig())
    model = shard(from_pretrained(args.model), mesh)
    prompt = args.prompt if model.tokenizer is not None else [int(t) for t in args.prompt.split()]
    (ids,) = generate(model, [prompt], max_new_tokens=args.max_new_tokens)
    if jax.process_index() == 0:
        text = model.tokenizer.decode(ids.tolist()) if model.tokenizer is not None else " ".join(map(str, ids))
        print(f"[mesh {dict(mesh.shape)} over {jax.process_count()} process(es)] {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
