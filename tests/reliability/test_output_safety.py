"""Output commands never delete or replace what the user did not ask to replace, and fail in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import bitnet_jax as bj
from bitnet_jax.cli import main
from bitnet_jax.errors import CheckpointError


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    rc = main(argv)
    return rc, capsys.readouterr().err.strip()


def _listing(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_convert_into_a_project_directory_is_refused(tmp_path, capsys):
    """A folder holding the user's files is never emptied (convert used to delete notes.txt and src/)."""
    project = tmp_path / "myproject"
    (project / "src").mkdir(parents=True)
    (project / "notes.txt").write_text("my notes")
    (project / "src" / "main.py").write_text("print(1)")
    before = _listing(tmp_path)
    rc, err = _cli(["convert", str(bj.DEFAULT_MODEL), str(project)], capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and str(project) in err and "refusing" in err
    assert _listing(tmp_path) == before  # nothing changed, no stray temporary files
    rc, err = _cli(["convert", str(bj.DEFAULT_MODEL), str(project), "--overwrite"], capsys)
    assert rc == 2 and _listing(tmp_path) == before  # --overwrite replaces only a model


def test_an_existing_file_is_not_turned_into_a_directory(tmp_path, capsys):
    target = tmp_path / "out"
    target.write_text("data")
    rc, err = _cli(["convert", str(bj.DEFAULT_MODEL), str(target), "--overwrite"], capsys)
    assert rc == 2 and "not a directory" in err and target.read_text() == "data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_gguf_onto_a_directory_or_a_non_gguf_file(tmp_path, capsys):
    (tmp_path / "d.gguf").mkdir()
    rc, err = _cli(["convert", str(bj.DEFAULT_MODEL), str(tmp_path / "d.gguf")], capsys)
    assert rc == 2 and "is a directory" in err and len(err.splitlines()) == 1
    (tmp_path / "t.gguf").write_text("text")
    rc, err = _cli(["convert", str(bj.DEFAULT_MODEL), str(tmp_path / "t.gguf"), "--overwrite"], capsys)
    assert rc == 2 and "not a GGUF file" in err and (tmp_path / "t.gguf").read_text() == "text"


def test_an_existing_model_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "m"
    assert _cli(["convert", str(bj.DEFAULT_MODEL), str(out)], capsys)[0] == 0
    first = _listing(out)
    rc, err = _cli(["convert", str(bj.DEFAULT_MODEL), str(out)], capsys)
    assert rc == 2 and "--overwrite" in err and _listing(out) == first
    assert _cli(["convert", str(bj.DEFAULT_MODEL), str(out), "--overwrite"], capsys)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no .m.*.old or .tmp left
    gguf = tmp_path / "m.gguf"
    assert _cli(["convert", str(bj.DEFAULT_MODEL), str(gguf)], capsys)[0] == 0
    assert _cli(["convert", str(bj.DEFAULT_MODEL), str(gguf)], capsys)[0] == 2
    assert _cli(["convert", str(bj.DEFAULT_MODEL), str(gguf), "--overwrite"], capsys)[0] == 0


def test_save_pretrained_refuses_without_overwrite(tmp_path):
    model = bj.from_pretrained(bj.DEFAULT_MODEL, kernel="xla")
    bj.save_pretrained(model, tmp_path / "m")
    with pytest.raises(CheckpointError, match="overwrite"):
        bj.save_pretrained(model, tmp_path / "m")
    bj.save_pretrained(model, tmp_path / "m", overwrite=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only permissions")
def test_read_only_target_is_one_line(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for out in (ro / "m", ro / "m.gguf"):
            rc, err = _cli(["convert", str(bj.DEFAULT_MODEL), str(out)], capsys)
            assert rc == 2 and len(err.splitlines()) == 1 and "cannot write" in err
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("out", ["m", "m.gguf"])
def test_disk_full_is_one_line_and_leaves_nothing(tmp_path, out):
    """A file-size limit (RLIMIT_FSIZE, as a full disk) fails the write with one line, exit 2, no temporaries."""
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000));"
        "from bitnet_jax.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.run([sys.executable, "-c", code, "convert", str(bj.DEFAULT_MODEL), str(tmp_path / out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert err[-1].startswith("bitnet-jax: error:") and "cannot write" in err[-1] and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
