"""The output formats, GGUF ternary encodings, GGUF architectures and I2_S layouts ``save_pretrained`` /
``convert`` write (no heavy imports, so the command line can list them instantly)."""

FORMATS: tuple[str, ...] = ("hf", "gguf")
QUANTS: tuple[str, ...] = ("i2_s", "tq2_0", "tq1_0", "f16", "f32")  # GGUF: i2_s is bitnet.cpp's type 36
GGUF_ARCHS: tuple[str, ...] = ("bitnet-b1.58", "bitnet-25", "bitnet", "llama")
# bitnet.cpp's I2_S code layouts: x86 with ACT_PARALLEL (default), ARM NEON, x86 without ACT_PARALLEL
I2S_LAYOUT_NAMES: tuple[str, ...] = ("x86", "arm", "x86-1x4")
# GGUF storage of the embedding (and an untied head): auto keeps the checkpoint's own dtype (lossless)
EMBED_TYPES: tuple[str, ...] = ("auto", "f32", "f16", "bf16")
