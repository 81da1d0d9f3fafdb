"""A seeded mutation fuzzer over the five file kinds bitnet-jax reads, the ``generate`` arguments and the CLI.

Kinds: ``config`` (config.json), ``safetensors`` (model.safetensors header and data), ``index`` (the
sharded index), ``gguf`` (header, metadata and tensor infos, re-serialized from a structured edit),
``tokenizer`` (tokenizer.json), ``generate`` (its arguments) and ``cli`` (``bitnet-jax`` argument
vectors). Each case ``(kind, seed)`` is reproducible. Outcomes: ``ok`` (loaded and the forward is finite,
or the call succeeded), ``error`` (a one-line :class:`BitNetError` naming the file), and the failures
``traceback`` (any other exception), ``nonfinite``, ``unnamed`` (an error not naming the file),
``multiline``, ``dataloss`` (an output command touched what it must not), ``hang``, ``oom``, ``crash``.

Cases run in a worker subprocess (``python fuzzlib.py worker BASE``) under ``RLIMIT_AS``; the parent
(:func:`run_cases`) bounds each case in time and restarts a worker that hung, crashed or ran out of memory.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

KINDS = ("config", "safetensors", "index", "gguf", "tokenizer", "generate", "cli")
FAILURES = ("traceback", "nonfinite", "unnamed", "multiline", "dataloss", "hang", "oom", "crash")
MEMORY_LIMIT = 12 << 30  # RLIMIT_AS of a worker (JAX reserves a few GiB of address space)
CASE_SECONDS = 60.0
PREFIX = "@@fuzz "

NASTY = [None, True, False, 0, -1, 1, 2, 3, 4, 7, 255, 2**31, 2**31 - 1, 2**40, 2**63, 2**64, -2**63, 0.5, -0.5,
         1e-300, 1e300, 1e38, 65535, float("inf"), float("-inf"), float("nan"), "", "x", "relu2", "silu", "default",
         "linear", "bitnet", "llama", [], [1, None], [0, 1], [0], ["a"], {}, {"rope_type": "linear"}, {"a": 1},
         {"rope_type": "default", "rope_theta": 1e300}, "\udcff"[:0] + "\u0000", "a" * 300]


def _nasty(rng: random.Random, base: Any = None) -> Any:
    """A hostile value: from the pool, or derived from ``base`` (scaled, negated, wrapped, stringified)."""
    if base is not None and rng.random() < 0.4:
        op = rng.randrange(6)
        if isinstance(base, (int, float)) and not isinstance(base, bool):
            return [base * 2, -base, base + 1, base * 1000, base / 3, str(base)][op]
        return [[base], {"v": base}, str(base), None, [base, base], json.dumps(base)][op]
    return rng.choice(NASTY)


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a JSON value (for picking a field to edit)."""
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list) and len(obj) <= 8:
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


def _edit_json(obj: Any, rng: random.Random, extra_keys: tuple[str, ...] = ()) -> Any:
    """One structural edit of a JSON value: set, delete, wrap or add a field."""
    paths = _paths(obj)
    op = rng.randrange(4)
    if op == 3 or not paths:
        key = rng.choice(extra_keys or ("unknown",))
        if isinstance(obj, dict):
            obj[key] = _nasty(rng)
        return obj
    path = rng.choice(paths)
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    last = path[-1]
    if op == 0 or op == 2:
        parent[last] = _nasty(rng, parent[last])
    elif isinstance(parent, dict):
        del parent[last]
    else:
        parent[last] = None
    return obj


def _bytes_edit(data: bytes, rng: random.Random, region: int | None = None) -> bytes:
    """A byte-level edit: flips, a truncation, an insertion or deep nesting."""
    b = bytearray(data)
    end = min(len(b), region or len(b))
    op = rng.randrange(5)
    if op == 0 and end:
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(end)] = rng.randrange(256)
    elif op == 1:
        del b[rng.randrange(len(b) + 1):]
    elif op == 2:
        pos = rng.randrange(end + 1)
        b[pos:pos] = rng.choice([b"\xff\xfe", b"\x00", b"[" * 100000, b"{\"a\":" * 50000, b"\x80abc", b"9" * 400])
    elif op == 3:
        b = bytearray(rng.choice([b"[" * 200000 + b"]" * 200000, b"", b"\xff" * 64, b"null", b"[]", b"1e999",
                                  b"\"x\"", b"{\"a\": 1}"]))
    elif end:
        pos = rng.randrange(end)
        b[pos:pos + 4] = struct.pack("<I", rng.choice([0, 1, 0xFFFFFFFF, 2**31, rng.randrange(2**32)]))
    return bytes(b)


# --- the base files ---------------------------------------------------------------------------------------

def make_base(base: Path) -> Path:
    """The unmutated inputs under ``base``: the default model (``hf``), a sharded copy and a GGUF file."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    import bitnet_jax as bj

    base.mkdir(parents=True, exist_ok=True)
    hf = base / "hf"
    if not hf.exists():
        shutil.copytree(bj.DEFAULT_MODEL, hf)
    sharded = base / "sharded"
    if not sharded.exists():
        tmp = base / "sharded.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(hf, tmp)
        tensors = load_file(str(tmp / "model.safetensors"))
        (tmp / "model.safetensors").unlink()
        names = sorted(tensors)
        halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
                  "model-00002-of-00002.safetensors": names[len(names) // 2:]}
        weight_map = {}
        for fname, part in halves.items():
            save_file({n: np.ascontiguousarray(tensors[n]) for n in part}, str(tmp / fname), metadata={"format": "pt"})
            weight_map.update({n: fname for n in part})
        (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        tmp.rename(sharded)
    gguf_file = base / "model.gguf"
    if not gguf_file.exists():
        model = bj.from_pretrained(hf, kernel="xla")
        bj.save_pretrained(model, base / "model.tmp.gguf", format="gguf", quant="i2_s")
        (base / "model.tmp.gguf").rename(gguf_file)
    return base


# --- GGUF: a plain parser / writer of the base file, so edits can change types, counts and offsets ------

_FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _read_gguf(data: bytes) -> dict:
    pos = 0

    def take(fmt):
        nonlocal pos
        (v,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return v

    def string():
        nonlocal pos
        n = take("<Q")
        s = data[pos:pos + n].decode()
        pos += n
        return s

    def value(t):
        if t in _FMT:
            return take(_FMT[t])
        if t == 8:
            return string()
        it, n = take("<I"), take("<Q")
        return (it, [value(it) for _ in range(n)])

    assert data[:4] == b"GGUF"
    pos = 4
    version, nt, nkv = take("<I"), take("<Q"), take("<Q")
    kvs = []
    for _ in range(nkv):
        k = string()
        t = take("<I")
        kvs.append([k, t, value(t)])
    infos = []
    for _ in range(nt):
        name = string()
        nd = take("<I")
        dims = [take("<Q") for _ in range(nd)]
        infos.append([name, dims, take("<I"), take("<Q")])
    start = -(-pos // 32) * 32
    return dict(version=version, kvs=kvs, infos=infos, blob=data[start:])


def _write_gguf(g: dict, counts: tuple[int, int] | None = None) -> bytes:
    out = bytearray(b"GGUF")

    def put(fmt, v):
        out.extend(struct.pack(fmt, v))

    def string(s):
        b = s.encode("utf-8", "surrogatepass") if isinstance(s, str) else bytes(s)
        put("<Q", len(b))
        out.extend(b)

    def value(t, v):
        if t in _FMT:
            fmt = _FMT[t]
            try:
                put(fmt, v)
            except (struct.error, TypeError):
                put(fmt, 0)
        elif t == 8:
            string(v if isinstance(v, (str, bytes)) else str(v))
        elif t == 9:
            it, items = v if isinstance(v, tuple) else (8, [str(v)])
            put("<I", it)
            put("<Q", len(items))
            for x in items:
                value(it, x)
        else:
            put("<I", 0)

    put("<I", g["version"])
    put("<Q", counts[0] if counts else len(g["infos"]))
    put("<Q", counts[1] if counts else len(g["kvs"]))
    for k, t, v in g["kvs"]:
        string(k)
        put("<I", t)
        value(t, v)
    for name, dims, t, off in g["infos"]:
        string(name)
        put("<I", len(dims))
        for d in dims:
            put("<Q", d % 2**64)
        put("<I", t % 2**32)
        put("<Q", off % 2**64)
    out.extend(b"\0" * (-len(out) % 32))
    out.extend(g["blob"])
    return bytes(out)


def _mutate_gguf(data: bytes, rng: random.Random) -> bytes:
    g = _read_gguf(data)
    header_len = len(data) - len(g["blob"])
    op = rng.randrange(12)
    kvs, infos = g["kvs"], g["infos"]
    counts = None
    if op == 0:  # a value changed, same type
        kv = rng.choice(kvs)
        if kv[1] in (4, 5, 10, 11, 0, 1, 2, 3):
            kv[2] = rng.choice([0, 1, 2, 3, 255, 2**31 - 1, 2**32 - 1, 2**63 - 1, rng.randrange(100000), kv[2] * 2])
        elif kv[1] in (6, 12):
            kv[2] = rng.choice([0.0, -1.0, float("inf"), float("nan"), 1e30, 65535.0, 1e-30])
        elif kv[1] == 8:
            kv[2] = rng.choice(["", "x", "bitnet", "llama", "gpt2", "none", "yarn", "\u00ff" * 10])
        elif kv[1] == 9 and kv[2][1]:
            it, items = kv[2]
            items = list(items)
            items[rng.randrange(len(items))] = items[0] if rng.random() < 0.5 else (
                "" if it == 8 else 2**31 - 1 if it in (4, 5) else float("nan") if it == 6 else 0)
            kv[2] = (it, items[: rng.choice([len(items), len(items) // 2, 1])])
    elif op == 1:  # a value stored as another type
        kv = rng.choice(kvs)
        t = rng.choice([0, 1, 4, 5, 6, 7, 8, 9, 10, 12])
        v = kv[2]
        if t == 9:
            v = (kv[1], [kv[2]]) if kv[1] != 9 else kv[2]
        elif t == 8:
            v = str(v)
        elif isinstance(v, tuple):
            v = len(v[1])
        kv[1], kv[2] = t, v
    elif op == 2:
        kvs.pop(rng.randrange(len(kvs)))
    elif op == 3:
        kvs.append(list(rng.choice(kvs)))
    elif op == 4:  # special keys
        key = rng.choice(["general.alignment", "general.architecture", "bitnet-b1.58.block_count",
                          "bitnet-b1.58.context_length", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                          "bitnet-b1.58.rope.freq_base", "bitnet-b1.58.attention.layer_norm_rms_epsilon"])
        t, v = rng.choice([(7, True), (1, 32), (4, 64), (4, 3), (10, 2**62), (8, "bitnet"), (9, (8, ["bitnet"])),
                           (4, 2**31), (6, float("nan")), (12, 1e300), (5, -1), (4, 0)])
        for kv in kvs:
            if kv[0] == key:
                kv[1], kv[2] = t, v
                break
        else:
            kvs.append([key, t, v])
    elif op == 5:  # tensor dims
        info = rng.choice(infos)
        info[1] = rng.choice([[info[1][0]], info[1] + [1], [0] + info[1][1:], [d * 2 for d in info[1]],
                              [2**32] * len(info[1]), list(reversed(info[1])), [1] * 5])
    elif op == 6:  # tensor type
        rng.choice(infos)[2] = rng.choice([0, 1, 2, 30, 34, 35, 36, 37, 39, 40, 1000])
    elif op == 7:  # offsets: overlapping, misaligned, past the end
        info = rng.choice(infos)
        other = rng.choice(infos)
        info[3] = rng.choice([other[3], other[3] + 32, info[3] + 1, 2**40, len(g["blob"]), 0])
    elif op == 8:  # a tensor dropped, duplicated or a .scale added/renamed
        r = rng.randrange(4)
        if r == 0:
            infos.pop(rng.randrange(len(infos)))
        elif r == 1:
            infos.append(list(rng.choice(infos)))
        else:
            target = "token_embd" if r == 2 else rng.choice(infos)[0].removesuffix(".weight")
            off = len(g["blob"]) + (-len(g["blob"]) % 32)
            g["blob"] = g["blob"] + b"\0" * (off - len(g["blob"])) + struct.pack("<f", rng.choice([1.0, 0.5, 1e30]))
            infos.append([target + ".scale", [1], 0, off])
    elif op == 9:
        counts = (len(infos) + rng.choice([-1, 1, 2**40]), len(kvs) + rng.choice([-1, 1, 2**50]))
    elif op == 10:
        g["version"] = rng.choice([0, 1, 4, 2**24, 3 << 24])
    else:
        return _bytes_edit(data, rng, region=header_len)
    return _write_gguf(g, counts)


# --- one case -----------------------------------------------------------------------------------------

def _mutate_safetensors(data: bytes, rng: random.Random) -> bytes:
    n = struct.unpack_from("<Q", data, 0)[0]
    header = json.loads(data[8:8 + n])
    body = bytearray(data[8 + n:])
    op = rng.randrange(6)
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    entry = header[name]
    if op == 0:
        entry["dtype"] = rng.choice(["F8_E4M3", "F8_E5M2", "I64", "BOOL", "U8", "F16", "BF16", "F64", "I8", "XX",
                                     "U64", 7, None])
    elif op == 1:
        entry["shape"] = rng.choice([[], [0], entry["shape"] + [1], [2, 2, 2], [2**62, 2**62], [-1],
                                     list(reversed(entry["shape"])), ["a"]])
    elif op == 2:
        a, b = entry["data_offsets"]
        entry["data_offsets"] = rng.choice([[b, a], [a, b + 4], [0, b - a], [a, 2**40], [a, a], [-1, b], "x"])
    elif op == 3 and entry["dtype"] == "F32":  # hostile values in a float tensor
        a, _ = entry["data_offsets"]
        k = rng.randrange(max(1, (entry["data_offsets"][1] - a) // 4))
        body[a + 4 * k:a + 4 * k + 4] = struct.pack("<f", rng.choice([float("nan"), float("inf"), 1e38, -1e38, 7e4]))
    elif op == 4:
        return _bytes_edit(data, rng, region=8 + n)
    else:
        return _bytes_edit(data, rng)
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(body)


def _mutate_tokenizer(tok: dict, rng: random.Random) -> Any:
    op = rng.randrange(6)
    if op == 0:
        tok["padding"] = {"strategy": rng.choice([{"Fixed": 2**63}, {"Fixed": 2**31}, {"Fixed": 3}, "BatchLongest",
                                                  {"Fixed": -1}]),
                          "direction": rng.choice(["Right", "Left", "x"]), "pad_to_multiple_of": rng.choice([None, 0, 8]),
                          "pad_id": rng.choice([0, 2**40, -1]), "pad_type_id": 0, "pad_token": "<pad>"}
    elif op == 1:
        tok["truncation"] = {"direction": "Right", "max_length": rng.choice([0, 1, 2**63, -1]), "strategy": "LongestFirst",
                             "stride": rng.choice([0, 5, 2**40])}
    elif op == 2 and isinstance(tok.get("model", {}).get("vocab"), dict):
        vocab = tok["model"]["vocab"]
        key = rng.choice(list(vocab))
        vocab[key] = rng.choice([4096, 5000, 2**31, 2**40, -1, "x", None, 1.5])
    elif op == 3 and tok.get("added_tokens"):
        tok["added_tokens"][rng.randrange(len(tok["added_tokens"]))]["id"] = rng.choice([4096, 2**32, -1, "a", None])
    else:
        return _edit_json(tok, rng, ("normalizer", "pre_tokenizer", "decoder", "post_processor", "model"))
    return tok


def _load_and_check(path: Path) -> str:
    """Load a model and run a finite forward; also encode/decode with its tokenizer."""
    import numpy as np

    import bitnet_jax as bj

    model = bj.from_pretrained(path, kernel="xla")
    vocab = model.config.vocab_size
    n = min(5, model.config.max_position_embeddings)
    logits = np.asarray(bj.forward(model, [[i % vocab for i in (1, 2, 3, 4, 5)[:n]]]))
    if not np.all(np.isfinite(logits)):
        return "nonfinite"
    if model.tokenizer is not None:
        ids = model.tokenizer.encode("hello world, 123 <|x|>")
        if any(not 0 <= i < vocab for i in ids):
            return "nonfinite"
        model.tokenizer.decode(ids)
    return "ok"


_DEFAULT = None


def _default_model():
    global _DEFAULT
    if _DEFAULT is None:
        import bitnet_jax as bj

        _DEFAULT = bj.from_pretrained(bj.DEFAULT_MODEL, kernel="xla")
    return _DEFAULT


def _generate_case(rng: random.Random) -> str:
    import numpy as np

    import bitnet_jax as bj

    model = _default_model()
    valid = dict(max_new_tokens=rng.choice([1, 2, 3]), temperature=rng.choice([0.0, 0.7]), top_k=rng.choice([None, 5]),
                 top_p=rng.choice([None, 0.9]), seed=rng.randrange(2**63), stop_tokens=rng.choice([None, (), [1]]))
    kwargs = dict(
        max_new_tokens=rng.choice([1, 2, 3, 0, -1, 2**31, 1.5, True, "3", None, 300, np.int64(2)]),
        temperature=rng.choice([0.0, 0.7, 1, -1.0, float("inf"), float("nan"), "1", None, True, 1e30]),
        top_k=rng.choice([None, 1, 5, 0, -1, 5000, 2.5, True]),
        top_p=rng.choice([None, 0.9, 1.0, 0.0, 1.5, float("nan"), "x"]),
        seed=rng.choice([0, 1, -1, 2**63, 2**70, 1.5, "s", None, True, np.int32(3)]),
        stop_tokens=rng.choice([None, (), [1], ["x"], [2**40], [-1], "abc", 5, [True], [1.5], np.array([2])]),
    )
    for key in kwargs:  # mostly valid arguments, a few hostile ones
        if rng.random() < 0.7:
            kwargs[key] = valid[key]
    prompts = rng.choice(["hello", [1, 2, 3], [[1, 2], [3]], ["hi", [4, 5]]]) if rng.random() < 0.5 else rng.choice([
                          "hello", "", [[0.5, 1.7]], [1, 2, 3], [[1, 2], [3]], ["a", [1]], [True], [2**40], [-1],
                          np.array([1, 2]), np.array([1.5]), None, 5, [], [[]], [[1, 2], "b"], [np.int64(3)],
                          ["x" * 300], b"abc", {"a": 1}])
    stream = rng.random() < 0.3
    if stream:
        out = [step for step in bj.generate_stream(model, prompts, **kwargs)]
        ok = all(t is None or (isinstance(t, int) and 0 <= t < model.config.vocab_size) for s in out for t in s)
    else:
        out = bj.generate(model, prompts, **kwargs)
        ok = all(np.all((o >= 0) & (o < model.config.vocab_size)) for o in out)
    return "ok" if ok else "nonfinite"


def _cli_case(rng: random.Random, work: Path, base: Path) -> tuple[str, str]:
    from bitnet_jax.cli import main

    junk = work / "project"
    junk.mkdir()
    (junk / "notes.txt").write_text("keep me")
    (work / "file.txt").write_text("keep me too")
    bad_cfg = work / "badmodel"
    bad_cfg.mkdir()
    (bad_cfg / "config.json").write_bytes(rng.choice([b"\xff\xfe", b"[" * 100000, b"{}", b'{"model_type": 5}']))
    model = rng.choice([None, str(base / "hf"), str(work / "nope"), str(work / "file.txt"), str(junk), str(bad_cfg),
                        str(base / "model.gguf"), "org/does-not-exist-xyz"])
    margs = ["--model", model] if model else []
    sub = rng.choice(["generate", "convert", "info", "perplexity"])
    if sub == "generate":
        argv = ["generate", *margs, rng.choice(["hello", "", "x" * 50]),
                "--max-new-tokens", rng.choice(["2", "0", "-1", "99999999999999999999", "abc", "1.5"]),
                "--temperature", rng.choice(["0", "0.7", "inf", "nan", "-1", "x"]),
                "--seed", rng.choice(["0", "-1", "1180591620717411303424", "x"])]
    elif sub == "convert":
        out = rng.choice([junk, work / "file.txt", junk / "m.gguf", work / "new", work / "new.gguf", work,
                          work / "project.gguf", base / "hf"])
        if out == work / "project.gguf":
            out.mkdir(exist_ok=True)
        argv = ["convert", model or str(base / "hf"), str(out)] + rng.choice([[], ["--overwrite"], ["--quant", "tq2_0"],
                                                                             ["--to", "gguf"]])
        if out == base / "hf":
            argv = argv[:2] + [str(work / "copy")] + argv[3:]
    elif sub == "info":
        argv = ["info", *margs]
    else:
        text = work / "text.txt"
        text.write_bytes(rng.choice([b"hello world", b"", b"\xff\xfe", b"a" * 5000]))
        argv = ["perplexity", *margs, str(text)]
    err, outbuf = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(outbuf):
            rc = main(argv)
    except SystemExit as e:  # argparse: usage + one error line
        rc = e.code if isinstance(e.code, int) else 2
        if rc == 2:
            return "error", err.getvalue()[-200:]
    text = err.getvalue().strip()
    if (junk / "notes.txt").read_text() != "keep me" or (work / "file.txt").read_text() != "keep me too":
        return "dataloss", " ".join(argv)
    if any(p.name.startswith(".") and p.name.endswith((".tmp", ".old")) for p in work.rglob("*")):
        return "dataloss", "stray temporary file: " + " ".join(argv)
    if rc == 0:
        return "ok", ""
    if rc == 2 and "Traceback" not in text:
        return ("error" if len(text.splitlines()) == 1 else "multiline"), text[:300]
    return "traceback", f"rc={rc} {' '.join(argv)[:200]}: {text[-300:]}"


def run_case(kind: str, seed: int, base: Path, work: Path) -> dict:
    """Mutate, load and classify one case; files go under ``work`` (emptied first)."""
    from bitnet_jax.errors import BitNetError

    rng = random.Random(f"{kind}:{seed}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    target = None
    try:
        if kind in ("config", "safetensors", "tokenizer"):
            target = work / "model"
            shutil.copytree(base / "hf", target)
            f = target / {"config": "config.json", "safetensors": "model.safetensors", "tokenizer": "tokenizer.json"}[kind]
            data = f.read_bytes()
            if kind == "safetensors":
                new = _mutate_safetensors(data, rng)
            elif rng.random() < 0.3:
                new = _bytes_edit(data, rng)
            else:
                obj = json.loads(data)
                for _ in range(rng.choice([1, 1, 2, 3])):
                    obj = (_mutate_tokenizer(obj, rng) if kind == "tokenizer" else
                           _edit_json(obj, rng, ("rope_scaling", "rope_parameters", "head_dim", "eos_token_id",
                                                 "bos_token_id", "pad_token_id", "quantization_config",
                                                 "num_hidden_layers", "max_position_embeddings", "rope_theta")))
                new = json.dumps(obj).encode()
            f.write_bytes(new)
        elif kind == "index":
            target = work / "model"
            shutil.copytree(base / "sharded", target)
            f = target / "model.safetensors.index.json"
            data = f.read_bytes()
            if rng.random() < 0.3:
                f.write_bytes(_bytes_edit(data, rng))
            else:
                obj = json.loads(data)
                op = rng.randrange(4)
                wm = obj["weight_map"]
                if op == 0:
                    obj["weight_map"] = _nasty(rng, wm)
                elif op == 1:
                    key = rng.choice(list(wm))
                    wm[key] = rng.choice([5, None, "", "../x.safetensors", "a" * 300, "missing.safetensors",
                                          "model-00002-of-00002.safetensors", "model-00001-of-00002.safetensors",
                                          "/etc/passwd", "config.json", ["x"], "\u0000"])
                elif op == 2:
                    wm.pop(rng.choice(list(wm)))
                else:
                    wm[rng.choice(["model.extra.weight", "lm_head.weight", ""])] = rng.choice(list(wm.values()))
                f.write_text(json.dumps(obj))
        elif kind == "gguf":
            target = work / "model.gguf"
            target.write_bytes(_mutate_gguf((base / "model.gguf").read_bytes(), rng))
        elif kind == "generate":
            return dict(kind=kind, seed=seed, outcome=_generate_case(rng))
        elif kind == "cli":
            outcome, detail = _cli_case(rng, work, base)
            return dict(kind=kind, seed=seed, outcome=outcome, detail=detail)
        else:
            raise ValueError(f"unknown kind {kind}")
        return dict(kind=kind, seed=seed, outcome=_load_and_check(target))
    except BitNetError as e:
        msg = str(e)
        if "\n" in msg.strip():
            outcome = "multiline"
        elif target is not None and str(target) not in msg and target.name not in msg:
            outcome = "unnamed"
        else:
            outcome = "error"
        return dict(kind=kind, seed=seed, outcome=outcome, detail=msg[:300])
    except MemoryError:
        return dict(kind=kind, seed=seed, outcome="oom")
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001  (pyo3's PanicException is a BaseException)
        import traceback

        tb = traceback.extract_tb(e.__traceback__)
        where = f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else "?"
        return dict(kind=kind, seed=seed, outcome="traceback", detail=f"{type(e).__name__}: {str(e)[:200]} at {where}")


# --- the worker and its driver ----------------------------------------------------------------------------

def _worker(base: Path) -> None:
    """Read ``KIND SEED`` lines, print one JSON result per line."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.setrecursionlimit(3000)
    work = base / f"work-{os.getpid()}"
    print(PREFIX + json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        kind, seed = line.split()
        result = run_case(kind, int(seed), base, work)
        print(PREFIX + json.dumps(result), flush=True)
    shutil.rmtree(work, ignore_errors=True)


def run_cases(cases: list[tuple[str, int]], base: Path, case_seconds: float = CASE_SECONDS,
              nice: int = 0, until: float | None = None) -> list[dict]:
    """Run ``cases`` in a bounded worker subprocess; a hang, crash or out-of-memory worker is restarted.
    ``until`` (a ``time.monotonic()`` value) stops submitting cases after that time."""
    import select

    make_base(base)
    results: list[dict] = []
    todo = list(cases)
    proc = None

    def start():
        p = subprocess.Popen([sys.executable, __file__, "worker", str(base)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
                             preexec_fn=(lambda: os.nice(nice)) if nice else None,
                             env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONWARNINGS": "ignore"})
        while True:
            line = p.stdout.readline()
            if not line:
                raise RuntimeError("the fuzz worker did not start")
            if line.startswith(PREFIX):
                return p

    while todo and (until is None or time.monotonic() < until):
        if proc is None or proc.poll() is not None:
            proc = start()
        kind, seed = todo.pop(0)
        proc.stdin.write(f"{kind} {seed}\n")
        proc.stdin.flush()
        deadline = time.monotonic() + case_seconds
        line = ""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if ready:
                line = proc.stdout.readline()
                if not line or line.startswith(PREFIX):
                    break
                line = ""  # something the library printed: keep waiting for the result
        if line:
            results.append(json.loads(line[len(PREFIX):]))
            continue
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            outcome = "hang"
        else:
            outcome = "crash"  # the worker died (a signal, or an exit outside a case's handler)
        results.append(dict(kind=kind, seed=seed, outcome=outcome, detail=f"worker exit {proc.returncode}"))
        proc = None
    if proc is not None:
        proc.stdin.close()
        proc.wait(timeout=30)
    return results


def summarize(results: list[dict]) -> dict:
    """Cases per kind and outcome, and the failing cases."""
    table: dict[str, dict[str, int]] = {}
    for r in results:
        table.setdefault(r["kind"], {}).setdefault(r["outcome"], 0)
        table[r["kind"]][r["outcome"]] += 1
    failures = [r for r in results if r["outcome"] in FAILURES]
    return dict(cases=len(results), by_kind=table, failures=len(failures), failing_cases=failures[:200])


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "worker":
    _worker(Path(sys.argv[2]))
