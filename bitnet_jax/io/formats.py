"""The output formats and GGUF ternary encodings ``save_pretrained`` / ``convert`` write (no heavy imports,
so the command line can list them instantly)."""

FORMATS: tuple[str, ...] = ("hf", "gguf")
QUANTS: tuple[str, ...] = ("i2_s", "tq2_0", "tq1_0", "f16", "f32")  # GGUF: i2_s is bitnet.cpp's type 36
