"""Hugging Face ids through huggingface_hub, on a cache laid out locally (models--org--name/snapshots/<rev>,
refs/main) with HF_HUB_OFFLINE=1: no network is needed or touched."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from bitnet_jax import DEFAULT_MODEL, CheckpointError, forward, from_pretrained, save_pretrained
from bitnet_jax.cli import main

REV = "0123456789abcdef0123456789abcdef01234567"


def lay_out(cache, repo: str, files: dict) -> None:
    """huggingface_hub's cache layout: blobs behind a snapshot of revision REV, refs/main -> REV."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / REV
    snap.mkdir(parents=True)
    (root / "blobs").mkdir()
    for name, src in files.items():
        blob = root / "blobs" / f"blob-{name}"
        shutil.copyfile(src, blob)
        (snap / name).symlink_to(blob)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(REV)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = from_pretrained(DEFAULT_MODEL)
    root = tmp_path_factory.mktemp("src")
    return model, save_pretrained(model, root / "hf"), save_pretrained(model, root / "m.gguf", format="gguf", quant="f32")


def test_hf_repo_loads_from_the_cache_offline(cache, exported):
    model, hf, _ = exported
    lay_out(cache, "microsoft/bitnet-b1.58-2B-4T", {p.name: p for p in hf.iterdir()})
    loaded = from_pretrained("microsoft/bitnet-b1.58-2B-4T")
    tokens = [[1, 5, 9, 300]]
    np.testing.assert_array_equal(np.asarray(forward(loaded, tokens)), np.asarray(forward(model, tokens)))
    assert loaded.tokenizer is not None


def test_gguf_repo_by_id_file_suffix_and_filename(cache, exported):
    model, _, gguf_path = exported
    lay_out(cache, "org/one-gguf", {"model-f32.gguf": gguf_path})
    lay_out(cache, "org/two-gguf", {"a.gguf": gguf_path, "b.gguf": gguf_path})
    tokens = [[1, 5, 9]]
    want = np.asarray(forward(model, tokens))
    for spec, kw in (("org/one-gguf", {}), ("org/two-gguf:b.gguf", {}), ("org/two-gguf", {"filename": "a.gguf"})):
        np.testing.assert_allclose(np.asarray(forward(from_pretrained(spec, **kw), tokens)), want, atol=1e-5)
    with pytest.raises(CheckpointError, match=r"org/two-gguf: .*several GGUF files \(a.gguf, b.gguf\)"):
        from_pretrained("org/two-gguf")


def test_missing_id_is_one_line_naming_it(cache):
    with pytest.raises(CheckpointError) as e:
        from_pretrained("nobody/no-such-model")
    msg = str(e.value)
    assert msg.startswith("nobody/no-such-model: ") and "HF_HUB_OFFLINE" in msg and "\n" not in msg
    with pytest.raises(CheckpointError, match="nobody/no-such-model:x.gguf: not in the local"):
        from_pretrained("nobody/no-such-model:x.gguf")


def test_local_files_only_without_the_offline_variable(cache, monkeypatch):
    from bitnet_jax.io import hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(CheckpointError, match="local_files_only=True"):
        hub.resolve("nobody/nothing", local_files_only=True)


def test_a_local_path_wins_over_an_id(tmp_path, monkeypatch, exported):
    _, hf, _ = exported
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()
    shutil.copytree(hf, tmp_path / "org" / "name")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert from_pretrained("org/name").config.num_hidden_layers == 4


def test_cli_model_accepts_an_id(cache, exported, capsys):
    _, hf, _ = exported
    lay_out(cache, "org/tiny", {p.name: p for p in hf.iterdir()})
    assert main(["info", "--model", "org/tiny"]) == 0
    assert main(["info", "--model", "org/absent"]) == 2
    err = capsys.readouterr().err
    assert "org/absent: not in the local Hugging Face cache" in err and err.count("\n") == 1
