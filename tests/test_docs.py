"""The project's own documents tell the truth about the code: every section the code cites
exists in docs/reference.md, every legacy switch is in its table, and design.md names real files."""

from __future__ import annotations

import pathlib
import re

import himamba as hm

ROOT = pathlib.Path(__file__).resolve().parent.parent
REFERENCE = (ROOT / "docs" / "reference.md").read_text()


def _sections() -> set[str]:
    """Section numbers of the reference's headings (``## 2.``, ``### 3.10``)."""
    return {m.group(1).rstrip(".") for m in re.finditer(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", REFERENCE, re.M)}


def test_every_section_the_code_cites_is_in_the_reference():
    cited: dict[str, set[str]] = {}
    for folder in ("himamba", "tests", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            for number in re.findall(r"§(\d+(?:\.\d+)?)", path.read_text()):
                cited.setdefault(number, set()).add(path.name)
    assert cited, "no citation found: the pattern is wrong"
    missing = {n: sorted(files) for n, files in cited.items() if n not in _sections()}
    assert not missing, f"cited but not in docs/reference.md: {missing}"


def test_every_legacy_switch_is_in_the_reference():
    for bug in hm.LEGACY_BUGS.values():
        assert f"| {bug.id} | `{bug.alias}` |" in REFERENCE, bug.id


def test_design_names_files_that_exist():
    design = (ROOT / "docs" / "design.md").read_text()
    named = set(re.findall(r"`((?:cache|core|memory|observe|viz|sim|differential|lens)/[a-z_/]+\.py)`", design))
    assert len(named) > 20
    missing = sorted(p for p in named if not (ROOT / "himamba" / p).exists())
    assert not missing, missing
