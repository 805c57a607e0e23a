"""Ballots per second and latency over HTTP: the ballot API against a bare view, same auth.

Usage (needs `wrk` from Debian and gunicorn; PostgreSQL is the target)::

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/ballots_bench python bench/ballots.py

One command does everything: migrates the database, creates a fresh community (``--members``
members, each with a user, a database session and a CSRF secret, so wrk can send a
``sessionid`` cookie and ``X-CSRFToken`` per member) and, per measured phase, a fresh open
proposal whose electorate is every member. It starts gunicorn (``config.wsgi`` through
``bench.ballot_settings``, ``DEBUG=false``; by default 4 sync workers with the project's
``config/gunicorn.py`` where the tree has it, as the README runs it in production; ``--workers 2
--threads 8`` gives the gthread workers of the figures before 2026-12-05) afresh for each phase
and runs wrk for
``--seconds`` per phase, for each ``--connections`` value, alternating:

- **bare**: ``PUT /bench/ballot-bare/SLUG/PK/``, a Django view behind the same middleware
  (session and user lookups, CSRF check) that answers 200 and writes nothing: the ceiling;
- **api**: ``PUT /api/v1/communities/SLUG/proposals/PK/ballot/`` with ``{"choice": ...}``;
- **form** (with ``--form``): the page's ``POST /c/SLUG/proposals/PK/vote/`` (302 = success).

Side by side in the same run (the machine is shared, so only phases of one run compare):

- ``--compare PATH``: also run the api (and form) phases on gunicorn started from another copy
  of the project at PATH (e.g. the tree before a change: ``git archive HEAD | tar -x -C PATH``),
  against the same database; they are labelled ``api@PATH-NAME``;
- ``--session-engines db cached_db``: repeat every phase, bare included, with each
  ``SESSION_ENGINE`` (``django.contrib.sessions.backends.<name>``; the cached one reads sessions
  from the cache, Redis when ``REDIS_URL`` is set), labelled ``api/cached_db``.

A Lua script walks the members in turn and picks yes / no / abstain so that every member's
choice changes on every pass: after the first pass every request is a ballot change. Reported:
ballots/s, p50 and p99 latency, the load average around each phase, and (PostgreSQL) the mean
time of one connection's INSERT + durable COMMIT, which bounds one community's serialised chain.

After each ballot phase it checks in the database, and exits non-zero if any check fails:

- one ballot row per member who voted, holding the receipt of that member's last audit entry;
- the community's audit chain verifies (``audit_verify``);
- the number of ballot audit entries equals the number of successful requests the server
  answered (gunicorn's access log), and wrk saw at most that many (it drops the requests still
  in flight when its time is up, but the server completes them): no answered ballot was lost.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Production settings for the server and this process alike: they must share SECRET_KEY (session
# signatures and the session auth hash depend on it).
os.environ["DEBUG"] = "false"
os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
os.environ.setdefault("SECURE_SSL_REDIRECT", "false")
os.environ.setdefault("ALLOWED_HOSTS", "127.0.0.1")
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.ballot_settings"

import django  # noqa: E402

django.setup()

from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY  # noqa: E402
from django.contrib.auth.hashers import make_password  # noqa: E402
from django.contrib.auth.models import User  # noqa: E402
from django.contrib.sessions.backends.db import SessionStore  # noqa: E402
from django.contrib.sessions.models import Session  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

from governance.models import AuditEntry, Ballot, Community, Membership, Proposal  # noqa: E402
from governance.selectors import audit_verify, policy_version_current  # noqa: E402
from governance.services import community_create, membership_create, proposal_create, proposal_open  # noqa: E402  # noqa: E402

LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)

LUA = r"""
-- args: members file, path, mode (api | form | bare), number of wrk threads
local members, threads = {}, {}
local choices = {"yes", "no", "abstain"}
local path, mode, nthreads
local counter = 0
ok, bad = 0, 0 -- globals: done() reads them with thread:get

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(args[1]) do
    local sid, csrf = line:match("^(%S+) (%S+)$")
    members[#members + 1] = {sid, csrf}
  end
  path, mode, nthreads = args[2], args[3], tonumber(args[4])
end

function request()
  -- Threads interleave (thread t takes t, t + T, t + 2T, ...): no member is in two threads'
  -- hands at once, and each pass over the members moves every member to another choice.
  local k = counter * nthreads + tid
  counter = counter + 1
  local index = k % #members
  local member = members[index + 1]
  local choice = choices[(math.floor(k / #members) + index) % 3 + 1]
  local headers = {["Cookie"] = "sessionid=" .. member[1] .. "; csrftoken=" .. member[2]}
  if mode == "form" then
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    return wrk.format("POST", path, headers,
      "choice=" .. choice .. "&csrfmiddlewaretoken=" .. member[2])
  end
  headers["Content-Type"] = "application/json"
  headers["X-CSRFToken"] = member[2]
  return wrk.format("PUT", path, headers, '{"choice":"' .. choice .. '"}')
end

function response(status, headers, body)
  if status == 200 or (mode == "form" and status == 302) then
    ok = ok + 1
  else
    bad = bad + 1
    if bad <= 3 then io.stderr:write("HTTP " .. status .. ": " .. body:sub(1, 300) .. "\n") end
  end
end

function done(summary, latency, requests)
  local total_ok, total_bad = 0, 0
  for _, thread in ipairs(threads) do
    total_ok = total_ok + thread:get("ok")
    total_bad = total_bad + thread:get("bad")
  end
  io.write(string.format("RESULT ok=%d bad=%d\n", total_ok, total_bad))
end
"""


def setup_community(*, members: int) -> tuple[Community, Membership, list[tuple[str, str]]]:
    """A fresh community of ``members`` users with sessions, its moderator, and the cookies."""
    tag = f"bb{time.strftime('%H%M%S')}{secrets.token_hex(2)}"
    community = community_create(slug=tag, name=f"Ballot bench {tag}")
    moderator = membership_create(
        community=community, external_id=f"{tag}-mod", actor=None, role="moderator"
    )
    password = make_password(None)  # unusable; hashing one per user would take minutes
    users = User.objects.bulk_create(
        [User(username=f"{tag}-u{i}", password=password) for i in range(members)], batch_size=2000
    )
    Membership.objects.bulk_create(
        [Membership(community=community, user=u, external_id=u.username) for u in users],
        batch_size=2000,
    )
    store = SessionStore()
    expires = timezone.now() + timedelta(days=1)
    sessions, creds = [], []
    for user in users:
        key = secrets.token_hex(16)
        data = {
            SESSION_KEY: str(user.pk),
            BACKEND_SESSION_KEY: "django.contrib.auth.backends.ModelBackend",
            HASH_SESSION_KEY: user.get_session_auth_hash(),
        }
        sessions.append(
            Session(session_key=key, session_data=store.encode(data), expire_date=expires)
        )
        # The cookie holds the unmasked 32-character secret; the header may send it as is.
        creds.append((key, secrets.token_hex(16)))
    Session.objects.bulk_create(sessions, batch_size=2000)
    return community, moderator, creds


def open_new_proposal(community: Community, moderator: Membership, title: str) -> Proposal:
    document = dict(policy_version_current(community=community).document)
    factors = document["model"]["factors"]
    while factors == document["model"]["factors"]:  # a proposal must change something
        factors = 8 + secrets.randbelow(200)
    document["model"] = {**document["model"], "factors": factors}
    proposal = proposal_create(
        community=community, author=moderator, title=title, rationale="", document=document
    )
    return proposal_open(proposal=proposal, actor=moderator)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def wrk(
    url: str, *, lua: Path, members_file: Path, path: str, mode: str, connections: int, seconds: int
) -> dict[str, Any]:
    threads = 2
    command = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
        "--latency", "-s", str(lua), url, "--", str(members_file), path, mode, str(threads),
    ]  # fmt: skip
    before = loadavg()
    run = subprocess.run(command, capture_output=True, text=True)
    out = run.stdout
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    latency = {p: float(v) * scale[u] for p, v, u in LATENCY.findall(out)}
    result = re.search(r"RESULT ok=(\d+) bad=(\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if result is None:
        raise RuntimeError(f"wrk failed:\n{out}\n{run.stderr}")
    ok = int(result.group(1))
    return {
        "ok": ok,
        "bad": int(result.group(2)),
        "rps": ok / seconds,
        "p50_ms": latency.get("50", float("nan")),
        "p99_ms": latency.get("99", float("nan")),
        "socket_errors": socket_errors.group(1) if socket_errors else "",
        "stderr": run.stderr.strip(),
        "load": f"{before} -> {loadavg()}",
    }


@contextmanager
def gunicorn(command: list[str], *, env: dict[str, str], port: int, cwd: Path) -> Iterator[None]:
    server = subprocess.Popen(command, cwd=cwd, env=env)
    try:
        # --preload: the application is imported before the workers fork, so once one answers
        # they all can.
        for _ in range(600):
            try:
                urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/bench/ballot-bare/up/1/", timeout=5
                )
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("gunicorn did not start")
        yield
    finally:
        server.terminate()  # graceful: workers finish their current request
        server.wait()


def access_log_count(log: Path, path: str, statuses: set[str]) -> int:
    count = 0
    with log.open() as lines:
        for line in lines:
            status, _, logged = line.rstrip("\n").partition(" ")
            if logged == path and status in statuses:
                count += 1
    return count


def verify(
    *, community: Community, proposal: Proposal, answered: int, seen_ok: int, connections: int
) -> list[str]:
    """The post-run checks; returns the failures (empty when all hold)."""
    failures = []
    entries = AuditEntry.objects.filter(
        community=community, action__in=["ballot.cast", "ballot.changed"]
    ).order_by("seq")
    last: dict[str, str] = {}
    written = 0
    for payload in (e.payload for e in entries.iterator()):
        if payload["proposal"] == proposal.pk:
            written += 1
            last[payload["member"]] = payload["receipt"]
    ballots = Ballot.objects.filter(proposal=proposal)
    per_member = Counter(ballots.values_list("member_id", flat=True))
    if per_member and max(per_member.values()) != 1:
        failures.append("a member has more than one ballot row")
    stored = dict(ballots.values_list("member__external_id", "receipt"))
    if stored != last:
        failures.append(
            f"ballot rows ({len(stored)}) do not match the last audit entries ({len(last)})"
        )
    problems = [str(c.problem) for c in audit_verify(community=community) if c.problem]
    if problems:
        failures.append(f"audit chain: {problems}")
    if written != answered:
        failures.append(f"{written} ballot audit entries but {answered} answered requests")
    if not seen_ok <= answered <= seen_ok + connections:
        failures.append(f"wrk saw {seen_ok} successes, the server answered {answered}")
    return failures


def commit_latency(samples: int = 2000) -> float:
    """Mean milliseconds of one single-row INSERT committed durably (autocommit), one client."""
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS bench_commit_probe (id bigserial, t text)")
    start = time.perf_counter()
    for _ in range(samples):
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO bench_commit_probe (t) VALUES ('x')")  # autocommit
    elapsed = time.perf_counter() - start
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE bench_commit_probe")
    return elapsed / samples * 1000


def phase_list(
    *, form: bool, bare: bool, compare: Path | None, engines: list[str]
) -> list[dict[str, Any]]:
    """The phases to run for one connection count, in order: per session engine, the bare
    ceiling, then each mode on this tree and (``compare``) on the other one."""
    modes = ["api", "form"] if form else ["api"]
    trees: list[Path | None] = [None, compare] if compare is not None else [None]
    phases = []
    for engine in engines:
        suffix = f"/{engine}" if len(engines) > 1 else ""
        if bare:
            phases.append(
                {"mode": "bare", "tree": None, "engine": engine, "label": "bare" + suffix}
            )
        for mode in modes:
            for tree in trees:
                label = mode + (f"@{tree.name}" if tree is not None else "") + suffix
                phases.append({"mode": mode, "tree": tree, "engine": engine, "label": label})
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--connections", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="1: sync workers")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--form", action="store_true", help="also measure the HTML form POST")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare ceiling")
    parser.add_argument(
        "--compare", type=Path, help="another copy of the project to run api/form phases from"
    )
    parser.add_argument(
        "--session-engines",
        nargs="+",
        default=[],
        help="SESSION_ENGINE names (db, cached_db, cache) to run every phase with",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")

    call_command("migrate", verbosity=0)
    vendor = connection.vendor
    community, moderator, creds = setup_community(members=args.members)
    work = Path(tempfile.mkdtemp(prefix="ballots-bench-"))
    members_file = work / "members.txt"
    members_file.write_text("".join(f"{sid} {csrf}\n" for sid, csrf in creds))
    lua = work / "ballots.lua"
    lua.write_text(LUA)
    access_log = work / "access.log"
    base = f"http://127.0.0.1:{args.port}"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "bench.ballot_settings"}
    worker_args = ["-w", str(args.workers)]
    if args.threads > 1:
        worker_args += ["-k", "gthread", "--threads", str(args.threads)]
    command = [
        sys.executable, "-m", "gunicorn", "config.wsgi", "-b", f"127.0.0.1:{args.port}",
        *worker_args, "--preload", "--log-level", "warning", "--access-logfile", str(access_log),
        "--access-logformat", "%(s)s %(U)s",
    ]  # fmt: skip

    def command_in(tree: Path) -> list[str]:
        # The shipped gunicorn settings, as production runs them, where the tree has them.
        shipped = tree / "config" / "gunicorn.py"
        return [*command, "-c", str(shipped)] if shipped.exists() else command

    results: list[tuple[str, str, int, dict[str, Any]]] = []
    failures: list[str] = []
    engines = args.session_engines or [""]
    phases = phase_list(
        form=args.form, bare=not args.no_bare, compare=args.compare, engines=engines
    )
    for connections in args.connections:
        for phase in phases:
            mode, label = phase["mode"], phase["label"]
            tree = phase["tree"].resolve() if phase["tree"] is not None else ROOT
            phase_env = {**env, "PYTHONPATH": str(tree)}
            if phase["engine"]:
                phase_env["BENCH_SESSION_ENGINE"] = (
                    f"django.contrib.sessions.backends.{phase['engine']}"
                )
            proposal = open_new_proposal(community, moderator, f"{label} c{connections}")
            path = {
                "bare": f"/bench/ballot-bare/{community.slug}/{proposal.pk}/",
                "api": f"/api/v1/communities/{community.slug}/proposals/{proposal.pk}/ballot/",
                "form": f"/c/{community.slug}/proposals/{proposal.pk}/vote/",
            }[mode]
            # A server per phase: stopping it gracefully lets it finish the requests wrk left in
            # flight, so the checks below see a database at rest.
            with gunicorn(command_in(tree), env=phase_env, port=args.port, cwd=tree):
                result = wrk(
                    base + path,
                    lua=lua,
                    members_file=members_file,
                    path=path,
                    mode=mode,
                    connections=connections,
                    seconds=args.seconds,
                )
            results.append((mode, label, connections, result))
            if result["bad"] or result["socket_errors"] or not result["ok"]:
                failures.append(
                    f"{label} c{connections}: {result['bad']} failed requests, socket errors "
                    f"{result['socket_errors'] or 'none'} {result['stderr']}"
                )
            if mode == "bare":
                continue
            answered = access_log_count(access_log, path, {"302"} if mode == "form" else {"200"})
            result["answered"] = answered
            failures += [
                f"{label} c{connections}: {f}"
                for f in verify(
                    community=community,
                    proposal=proposal,
                    answered=answered,
                    seen_ok=result["ok"],
                    connections=connections,
                )
            ]
    probe = commit_latency() if vendor == "postgresql" else float("nan")

    kind = f"gthread {args.workers}x{args.threads}" if args.threads > 1 else "sync"
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {vendor}, {args.members} members, "
        f"one community, gunicorn {args.workers} workers ({kind}), wrk -t2, {args.seconds}s each"
    )
    print(f"single-connection INSERT + COMMIT: {probe:.3f} ms mean")
    bare_rps: dict[int, float] = {}
    for mode, label, connections, r in results:
        if mode == "bare":
            bare_rps[connections] = r["rps"]  # the ratio is to the latest bare phase
        ratio = (
            f"  {r['rps'] / bare_rps[connections]:.2f}x bare" if bare_rps.get(connections) else ""
        )
        answered = f"  (server answered {r['answered']})" if "answered" in r else ""
        print(
            f"{label:18} c{connections:<3} {r['rps']:7.0f}/s  p50 {r['p50_ms']:6.2f} ms  "
            f"p99 {r['p99_ms']:6.2f} ms  ok {r['ok']}{answered}{ratio}  load {r['load']}"
        )
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print("checks passed: one ballot per member, chain verifies, audit entries == answered 200s")


if __name__ == "__main__":
    main()
