"""Write a tiny *randomly initialised* BitNet model directory (HF packed format + a small tokenizer).

The weights are random, so generated text is noise: the directory exists to exercise the whole
pipeline (loading, generation, the CLI) offline. Usage: ``python scripts/make_tiny_model.py OUT_DIR``.
"""

from __future__ import annotations

import argparse
import sysconfig
from pathlib import Path

import dataclasses

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from bitnet_jax import ModelConfig
from bitnet_jax.io import random_checkpoint, save_pretrained
from bitnet_jax.io.loading import model_from_checkpoint
from bitnet_jax.io.tokenizer import Tokenizer as BitNetTokenizer

SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>"]


def train_tokenizer(vocab_size: int, files: list[str]) -> Tokenizer:
    """A byte-level BPE with BOS/EOS as ids 0/1, trained on ``files``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train(files, trainer)
    return tok


def main() -> None:
    """Build and save the tiny model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output directory")
    parser.add_argument("--preset", default="tiny", help="model preset from configs/models (default: tiny)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    config = ModelConfig.preset(args.preset).replace(bos_token_id=0, eos_token_id=1)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = [str(p) for p in sorted(stdlib.glob("*.py"))[:20]]
    tokenizer = train_tokenizer(config.vocab_size, files)
    model = model_from_checkpoint(random_checkpoint(config, seed=args.seed))
    model = dataclasses.replace(model, tokenizer=BitNetTokenizer(tokenizer, 0, (1,)))
    save_pretrained(model, args.out)
    print(f"wrote a random {args.preset} model to {args.out}")


if __name__ == "__main__":
    main()
