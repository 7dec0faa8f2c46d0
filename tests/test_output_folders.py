"""Writing output: a non-empty folder needs --force, and a symbolic link is never followed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import himamba as hm
from himamba.cli import main
from himamba.validate import prepare_output_dir, prepare_output_file, write_text_no_follow


def test_demo_with_force_replaces_its_page_and_never_follows_a_planted_link(tmp_path: Path, capsys) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.html").symlink_to(victim)
    (out / "notes.txt").write_text("mine")
    assert main(["demo", str(out)]) == 2
    assert "not empty; pass --force" in capsys.readouterr().err
    assert main(["demo", str(out), "--force"]) == 0
    assert victim.read_text() == "keep me"
    page = out / "index.html"
    assert not page.is_symlink() and "<svg" in page.read_text()
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "notes.txt"]  # no temporary left


def test_replay_svg_with_force_writes_into_a_used_folder(tmp_path: Path, capsys) -> None:
    script = tmp_path / "s.json"
    script.write_text(json.dumps({"cache": "device", "config": {"device": "cpu"},
                                  "ops": [{"op": "request", "tokens": [1, 2]}, {"op": "evict", "n": 2}]}))
    out = tmp_path / "svg"
    out.mkdir()
    (out / "old.svg").write_text("mine")
    assert main(["replay", str(script), "--svg", str(out)]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["old.svg"]
    assert main(["replay", str(script), "--svg", str(out), "--force"]) == 0
    assert len(list(out.glob("step_*.svg"))) >= 2 and (out / "old.svg").read_text() == "mine"


def test_fuzz_out_is_checked_before_the_run(tmp_path: Path, capsys) -> None:
    out = tmp_path / "script.json"
    out.write_text("mine")
    assert main(["fuzz", "--legacy", "B3", "--ops", "3000", "--no-progress", "--out", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err and out.read_text() == "mine"
    assert main(["fuzz", "--legacy", "B3", "--ops", "3000", "--no-progress", "--out", str(out), "--force"]) == 1
    assert json.loads(out.read_text())["ops"]


def test_the_helpers(tmp_path: Path) -> None:
    assert prepare_output_dir(tmp_path / "a" / "b").is_dir()  # created, parents too
    (tmp_path / "a" / "b" / "x").write_text("1")
    with pytest.raises(hm.InvalidInputError, match="not empty"):
        prepare_output_dir(tmp_path / "a" / "b")
    assert prepare_output_dir(tmp_path / "a" / "b", force=True)
    with pytest.raises(hm.InvalidInputError, match="not a folder"):
        prepare_output_dir(tmp_path / "a" / "b" / "x")
    with pytest.raises(hm.InvalidInputError, match="does not exist"):
        prepare_output_file(tmp_path / "nowhere" / "f.json")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "a" / "b" / "x")
    with pytest.raises(hm.InvalidInputError, match="symbolic link"):
        prepare_output_file(link, force=True)
    write_text_no_follow(link, "new")
    assert not link.is_symlink() and link.read_text() == "new"
    assert (tmp_path / "a" / "b" / "x").read_text() == "1"
