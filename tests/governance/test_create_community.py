from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from governance.models import AuditEntry, CharterVersion, Community, PolicyVersion
from governance.selectors import (
    charter_of,
    charter_version_current,
    policy_of,
    policy_version_current,
)


def _nothing_written() -> bool:
    return not (
        Community.objects.exists()
        or PolicyVersion.objects.exists()
        or CharterVersion.objects.exists()
        or AuditEntry.objects.exists()
    )


def _file(tmp_path: Path, name: str, content: object) -> str:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), "utf-8")
    return str(path)


def test_it_creates_a_community_with_the_documented_defaults(db: None) -> None:
    out = StringIO()
    call_command("create_community", "garden", name="The Garden", stdout=out)
    assert "created community garden (The Garden)" in out.getvalue()
    community = Community.objects.get(slug="garden")
    assert policy_version_current(community=community).number == 1
    assert charter_of(charter_version_current(community=community)).quorum == 0.2
    labels = set(AuditEntry.objects.values_list("actor_label", flat=True))
    assert labels == {"manage.py create_community"}


def test_it_takes_the_genesis_policy_and_charter_from_files(db: None, tmp_path: Path) -> None:
    call_command(
        "create_community",
        "garden",
        name="Garden",
        policy=_file(tmp_path, "p.json", {"model": {"factors": 16}}),
        charter=_file(tmp_path, "c.json", {"quorum": 0.4, "who_may_propose": "members"}),
        stdout=StringIO(),
    )
    community = Community.objects.get(slug="garden")
    assert policy_of(policy_version_current(community=community)).model.factors == 16
    charter = charter_of(charter_version_current(community=community))
    assert (charter.quorum, charter.who_may_propose) == (0.4, "members")


def test_a_bad_policy_file_fails_with_the_field_paths_and_writes_nothing(
    db: None, tmp_path: Path
) -> None:
    policy = _file(
        tmp_path, "p.json", {"model": {"factors": 0, "alfa": 1}, "candidates": {"pool_size": "x"}}
    )
    with pytest.raises(CommandError) as failure:
        call_command("create_community", "garden", name="Garden", policy=policy)
    message = str(failure.value)
    assert f"policy file {policy} is invalid" in message
    assert "model.factors: Input should be greater than or equal to 1" in message
    assert "model.alfa: Extra inputs are not permitted" in message
    assert "candidates.pool_size: Input should be a valid integer" in message
    assert _nothing_written()


def test_a_bad_charter_file_fails_with_the_field_path_and_writes_nothing(
    db: None, tmp_path: Path
) -> None:
    charter = _file(tmp_path, "c.json", {"approval_threshold": 0.3})
    with pytest.raises(CommandError, match="approval_threshold: Input should be greater"):
        call_command("create_community", "garden", name="Garden", charter=charter)
    assert _nothing_written()


def test_a_file_that_is_not_json_fails_with_the_line(db: None, tmp_path: Path) -> None:
    policy = _file(tmp_path, "p.json", '{\n  "model": {,}\n}')
    with pytest.raises(CommandError, match=r"is not valid JSON: .*\(line 2, column 13\)"):
        call_command("create_community", "garden", name="Garden", policy=policy)
    assert _nothing_written()


def test_a_missing_file_fails_clearly(db: None, tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="No such file"):
        call_command("create_community", "g", name="G", charter=str(tmp_path / "nope.json"))


def test_an_existing_slug_fails_clearly_and_changes_nothing(db: None) -> None:
    call_command("create_community", "garden", name="Garden", stdout=StringIO())
    entries = AuditEntry.objects.count()
    with pytest.raises(CommandError, match="a community with slug 'garden' already exists"):
        call_command("create_community", "garden", name="Other")
    assert Community.objects.get().name == "Garden"
    assert AuditEntry.objects.count() == entries


def test_an_invalid_slug_is_refused(db: None) -> None:
    with pytest.raises(CommandError, match="not a valid slug"):
        call_command("create_community", "no spaces", name="X")
    assert _nothing_written()
