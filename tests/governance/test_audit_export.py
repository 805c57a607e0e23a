"""The export verifies with the standalone algorithm printed in docs/audit.md."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from governance.models import AuditEntry, Community
from governance.services import membership_create
from tests.factories import make_community

DOC = Path(__file__).resolve().parents[2] / "docs" / "audit.md"


@pytest.fixture
def verifier(tmp_path: Path) -> Path:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    assert len(blocks) == 1, "docs/audit.md should hold exactly one python code block"
    path = tmp_path / "verify_audit.py"
    path.write_text(blocks[0], encoding="utf-8")
    return path


def _run(verifier: Path, export: Path) -> subprocess.CompletedProcess[str]:
    # Run from an empty directory with a bare environment: nothing of the project is importable.
    return subprocess.run(
        [sys.executable, "-I", str(verifier), str(export)],
        cwd=verifier.parent,
        env={},
        capture_output=True,
        text=True,
    )


def test_the_documented_verifier_accepts_an_export_of_every_community(
    db: None, verifier: Path, tmp_path: Path
) -> None:
    garden = make_community("garden")
    membership_create(community=garden, external_id="zoë", actor=None, display_name="Zoë")
    make_community("orchard")
    export = tmp_path / "audit.jsonl"
    call_command("audit_export", output=str(export), stdout=StringIO())
    lines = export.read_text(encoding="utf-8").splitlines()
    assert len(lines) == AuditEntry.objects.count() == 11
    result = _run(verifier, export)
    assert result.returncode == 0, result.stderr
    assert f"OK community {garden.pk}: 6 entries, head seq 6" in result.stdout
    assert result.stdout.count("OK community") == 2


def test_an_export_of_one_community_holds_only_its_entries_and_verifies(
    db: None, verifier: Path, tmp_path: Path
) -> None:
    make_community("garden")
    orchard = make_community("orchard")
    out = StringIO()
    call_command("audit_export", community="orchard", stdout=out)
    export = tmp_path / "orchard.jsonl"
    export.write_text(out.getvalue(), encoding="utf-8")
    entries = [json.loads(line) for line in out.getvalue().splitlines()]
    assert {entry["community"] for entry in entries} == {orchard.pk}
    assert [entry["seq"] for entry in entries] == [1, 2, 3, 4, 5]
    assert _run(verifier, export).returncode == 0


@pytest.mark.parametrize(
    ("edit", "complaint"),
    [
        (lambda e: e[2].update(actor_label="mallory"), "seq 3: hash mismatch"),
        (lambda e: e.pop(2), "seq 3 missing or moved"),
        (lambda e: e.insert(1, e.pop(3)), "seq 2 missing or moved"),
        (lambda e: e[4]["payload"].update(number=9), "seq 5: hash mismatch"),
    ],
)
def test_the_documented_verifier_rejects_an_edited_export(
    community: Community,
    verifier: Path,
    tmp_path: Path,
    edit,
    complaint: str,  # type: ignore[no-untyped-def]
) -> None:
    out = StringIO()
    call_command("audit_export", community="garden", stdout=out)
    entries = [json.loads(line) for line in out.getvalue().splitlines()]
    edit(entries)
    export = tmp_path / "edited.jsonl"
    export.write_text("".join(json.dumps(e) + "\n" for e in entries), encoding="utf-8")
    result = _run(verifier, export)
    assert result.returncode != 0
    assert complaint in result.stderr


def test_exporting_an_unknown_community_fails_clearly(db: None) -> None:
    with pytest.raises(CommandError, match="no community with slug 'nowhere'"):
        call_command("audit_export", community="nowhere")
