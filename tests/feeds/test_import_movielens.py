"""import_movielens on the real ml-100k files, and on copies with one line broken."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from io import StringIO
from pathlib import Path

import pytest
from django.apps import apps
from django.core.management import CommandError, call_command
from django.db.models import Count, Q

from feeds.models import Creator, Interaction, Item, ItemCreator
from governance.models import Community, Membership

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ML_100K = PROJECT_ROOT.parent / "shared" / "data" / "ml-100k"
PREFIX = "ml-100k"


@pytest.fixture
def ml_dir() -> Path:
    if not ML_100K.is_dir():
        pytest.skip(f"MovieLens data not found at {ML_100K}")
    return ML_100K


def dataset_copy(source: Path, target: Path, *, ratings: int | None = None) -> Path:
    """Copy the dataset to ``target/ml-100k``, optionally keeping only the first ``ratings``."""
    folder = target / PREFIX
    folder.mkdir()
    for path in source.iterdir():
        shutil.copyfile(path, folder / path.name)
    if ratings is not None:
        inter = folder / f"{PREFIX}.inter"
        lines = inter.read_text(encoding="utf-8").splitlines(keepends=True)
        inter.write_text("".join(lines[: ratings + 1]), encoding="utf-8")
    return folder


def line_replace(path: Path, line: int, edit: Callable[[list[str]], list[str]]) -> None:
    """Rewrite 1-based ``line`` of a tab-separated file through ``edit`` (fields -> fields)."""
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[line - 1] = "\t".join(edit(lines[line - 1].split("\t")))
    path.write_text("\n".join(lines), encoding="utf-8")


def run_import(directory: Path, slug: str = "movielens") -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(
        "import_movielens",
        str(directory),
        community=slug,
        no_progress=True,
        stdout=out,
        stderr=err,
    )
    return out.getvalue(), err.getvalue()


def counts(community: Community) -> dict[str, int]:
    return {
        "members": Membership.objects.filter(community=community).count(),
        "items": Item.objects.filter(community=community).count(),
        "creators": Creator.objects.filter(community=community).count(),
        "credits": ItemCreator.objects.filter(item__community=community).count(),
        "interactions": Interaction.objects.filter(community=community).count(),
    }


def rows_in_project_tables() -> dict[str, int]:
    models = [
        *apps.get_app_config("governance").get_models(),
        *apps.get_app_config("feeds").get_models(),
    ]
    return {model.__name__: model.objects.count() for model in models}


def directors_in_files(directory: Path) -> dict[str, list[str]]:
    """MovieLens item id -> director Freebase ids in file order, read straight from the files."""
    entity_to_item = dict(
        reversed(line.split("\t"))
        for line in (directory / f"{PREFIX}.link").read_text().splitlines()[1:]
    )
    directors: dict[str, list[str]] = {}
    for line in (directory / f"{PREFIX}.directed_by.kg").read_text().splitlines()[1:]:
        head, _, tail = line.split("\t")
        directors.setdefault(entity_to_item[head], []).append(tail)
    return directors


@pytest.mark.django_db
def test_importing_ml_100k_gives_exactly_the_documented_counts(ml_dir: Path) -> None:
    out, _ = run_import(ml_dir)

    community = Community.objects.get(slug="movielens")
    assert counts(community) == {
        "members": 943,
        "items": 1_682,
        "creators": 1_132,
        "credits": 1_727 + 92,
        "interactions": 100_000,
    }
    creators = Creator.objects.filter(community=community)
    assert creators.exclude(external_id="unattributed").count() == 1_131
    per_item = Item.objects.filter(community=community).annotate(
        directors=Count("credits", filter=~Q(credits__creator__external_id="unattributed"))
    )
    assert per_item.filter(directors__gte=1).count() == 1_590
    assert per_item.filter(directors__gte=2).count() == 93
    assert per_item.filter(directors=0).count() == 92
    assert "100,000 (100,000 created, 0 already present)" in out


@pytest.mark.django_db
def test_users_films_and_ratings_are_mapped_as_documented(ml_dir: Path, tmp_path: Path) -> None:
    run_import(dataset_copy(ml_dir, tmp_path, ratings=100))

    community = Community.objects.get(slug="movielens")
    member = Membership.objects.get(community=community, external_id="196")
    assert member.user is None
    assert member.role == Membership.Role.MEMBER
    assert member.display_name == "MovieLens user 196"
    toy_story = Item.objects.get(community=community, external_id="1")
    assert toy_story.title == "Toy Story"
    assert toy_story.tags == ["Animation", "Children's", "Comedy"]
    assert toy_story.provenance == Item.Provenance.HUMAN
    assert toy_story.published_at == datetime(1995, 1, 1, tzinfo=UTC)
    assert toy_story.url == ""
    # The first rating in the file: user 196 gave film 242 three stars.
    rating = Interaction.objects.get(
        community=community, idempotency_key="movielens:196:242:881250949"
    )
    assert (rating.member.external_id, rating.item.external_id) == ("196", "242")
    assert rating.kind == Interaction.Kind.RATING
    assert rating.weight == 3.0
    assert rating.occurred_at == datetime.fromtimestamp(881250949, tz=UTC)
    assert set(Interaction.objects.filter(community=community).values_list("kind", flat=True)) == {
        "rating"
    }
    # Members joined when they first rated, so their join date precedes their history.
    first = min(Interaction.objects.filter(member=member).values_list("occurred_at", flat=True))
    assert member.joined_at == first


@pytest.mark.django_db
def test_running_the_import_twice_changes_no_counts(ml_dir: Path) -> None:
    run_import(ml_dir)
    community = Community.objects.get(slug="movielens")
    first = counts(community)

    out, _ = run_import(ml_dir)

    assert counts(community) == first
    assert "100,000 (0 created, 100,000 already present)" in out
    assert Community.objects.count() == 1


@pytest.mark.django_db
def test_a_film_with_several_directors_credits_all_of_them_in_file_order(
    ml_dir: Path, tmp_path: Path
) -> None:
    run_import(dataset_copy(ml_dir, tmp_path, ratings=100))

    expected = {item: ds for item, ds in directors_in_files(ml_dir).items() if len(ds) > 1}
    assert len(expected) == 93
    credited = {
        item: list(
            ItemCreator.objects.filter(item__external_id=item)
            .order_by("position")
            .values_list("creator__external_id", flat=True)
        )
        for item in expected
    }
    assert credited == expected
    positions = ItemCreator.objects.filter(item__external_id="18").values_list(
        "position", flat=True
    )
    assert sorted(positions) == list(range(len(expected["18"])))


@pytest.mark.django_db
def test_films_without_a_director_belong_to_one_unattributed_creator(
    ml_dir: Path, tmp_path: Path
) -> None:
    run_import(dataset_copy(ml_dir, tmp_path, ratings=100))

    unattributed = Creator.objects.get(external_id="unattributed")
    assert unattributed.name == "Unattributed"
    assert unattributed.placeholder
    assert not Creator.objects.exclude(pk=unattributed.pk).filter(placeholder=True).exists()
    films = set(
        ItemCreator.objects.filter(creator=unattributed).values_list("item__external_id", flat=True)
    )
    all_films = set(Item.objects.values_list("external_id", flat=True))
    assert films == all_films - set(directors_in_files(ml_dir))
    assert len(films) == 92
    # The unattributed creator is those films' only credit, in the primary position.
    assert set(
        ItemCreator.objects.filter(item__external_id__in=films).values_list("position", "creator")
    ) == {(0, unattributed.pk)}
    # Directors are named by their Freebase id: the dataset has no names.
    director = Creator.objects.exclude(pk=unattributed.pk).first()
    assert director is not None and director.name == director.external_id


@pytest.mark.django_db
def test_a_release_year_that_is_not_a_year_leaves_published_at_empty_with_a_warning(
    ml_dir: Path, tmp_path: Path
) -> None:
    _, err = run_import(dataset_copy(ml_dir, tmp_path, ratings=10))

    # ml-100k itself has "unkonwn" (film 267) and "V" (film 1412) as release years.
    assert Item.objects.get(external_id="267").published_at is None
    assert Item.objects.get(external_id="1412").published_at is None
    assert "ml-100k.item, line 268: release_year 'unkonwn'" in err
    # The MovieLens pseudo-genre "unknown" is not kept as a tag.
    assert Item.objects.get(external_id="267").tags == []


BROKEN = {
    "a rating above 5": ("inter", 5, lambda f: [f[0], f[1], "6", f[3]], "rating '6'"),
    "a rating of 0": ("inter", 6, lambda f: [f[0], f[1], "0", f[3]], "rating '0'"),
    "a missing column": ("inter", 10, lambda f: f[:3], "expected 4 tab-separated columns"),
    "an unknown user": (
        "inter",
        7,
        lambda f: ["9999", *f[1:]],
        "user_id 9999 is not in the .user file",
    ),
    "an unknown film": (
        "inter",
        8,
        lambda f: [f[0], "99999", *f[2:]],
        "item_id 99999 is not in the .item file",
    ),
    "a timestamp that is not an integer": (
        "inter",
        9,
        lambda f: [*f[:3], "soon"],
        "timestamp 'soon' is not an integer",
    ),
    "a user id that is not an integer": ("user", 3, lambda f: ["x3", *f[1:]], "user_id 'x3'"),
    "an extra column in the films": ("item", 4, lambda f: [*f, "extra"], "expected 4"),
    "a wrong header": ("user", 1, lambda f: ["uid:token", *f[1:]], "expected the tab-separated"),
    "a link to an unknown film": ("link", 2, lambda f: ["99999", f[1]], "item_id 99999"),
    "a relation other than directed_by": (
        "directed_by.kg",
        2,
        lambda f: [f[0], "film.film.produced_by", f[2]],
        "relation_id 'film.film.produced_by'",
    ),
}


@pytest.mark.django_db
@pytest.mark.parametrize("case", list(BROKEN), ids=list(BROKEN))
def test_a_malformed_line_fails_naming_file_and_line_and_writes_nothing(
    case: str, ml_dir: Path, tmp_path: Path
) -> None:
    suffix, line, edit, message = BROKEN[case]
    folder = dataset_copy(ml_dir, tmp_path)
    line_replace(folder / f"{PREFIX}.{suffix}", line, edit)

    with pytest.raises(CommandError) as failure:
        run_import(folder)

    assert f"{PREFIX}.{suffix}, line {line}: " in str(failure.value)
    assert message in str(failure.value)
    assert set(rows_in_project_tables().values()) == {0}


@pytest.mark.django_db
def test_a_missing_file_fails_naming_it_and_writes_nothing(ml_dir: Path, tmp_path: Path) -> None:
    folder = dataset_copy(ml_dir, tmp_path)
    (folder / f"{PREFIX}.link").unlink()

    with pytest.raises(CommandError, match=r"ml-100k\.link: file not found"):
        run_import(folder)

    assert set(rows_in_project_tables().values()) == {0}


@pytest.mark.django_db
def test_bytes_that_are_not_utf8_are_reported_on_their_own_line(
    ml_dir: Path, tmp_path: Path
) -> None:
    folder = dataset_copy(ml_dir, tmp_path)
    items = folder / f"{PREFIX}.item"
    lines = items.read_bytes().split(b"\n")
    lines[299] = b"299\tBad \xff title\t1995\tDrama"
    items.write_bytes(b"\n".join(lines))

    with pytest.raises(CommandError, match=r"ml-100k\.item, line 300: not valid UTF-8"):
        run_import(folder)

    assert set(rows_in_project_tables().values()) == {0}


@pytest.mark.django_db
def test_a_bad_line_late_in_the_ratings_still_writes_nothing(ml_dir: Path, tmp_path: Path) -> None:
    folder = dataset_copy(ml_dir, tmp_path)
    line_replace(folder / f"{PREFIX}.inter", 100_001, lambda f: [f[0], f[1], "3.5.1", f[3]])

    with pytest.raises(CommandError, match=r"ml-100k\.inter, line 100001: rating '3\.5\.1'"):
        run_import(folder)

    assert set(rows_in_project_tables().values()) == {0}


def test_the_command_exits_non_zero_with_the_error_on_stderr(ml_dir: Path, tmp_path: Path) -> None:
    folder = dataset_copy(ml_dir, tmp_path)
    line_replace(folder / f"{PREFIX}.inter", 42, lambda f: [f[0], f[1], "11", f[3]])
    env = {**os.environ, "DEBUG": "1"}
    env.setdefault("DJANGO_SETTINGS_MODULE", "config.test_settings")

    # The error is found while parsing, before the command opens a database connection.
    result = subprocess.run(
        [sys.executable, "manage.py", "import_movielens", str(folder), "--community", "broken"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 1
    assert "ml-100k.inter, line 42: rating '11' is not a number from 1 to 5" in result.stderr
    assert "Nothing was imported." in result.stderr
    assert result.stdout == ""
