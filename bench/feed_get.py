"""Feed GET throughput and latency: our API against bare Django views on the same server.

Usage (needs `wrk` from Debian and gunicorn; the community must have computed feeds)::

    DEBUG=true DATABASE_URL=... REDIS_URL=... python bench/feed_get.py SLUG [--connections 32]
        [--members N]   # N members' feeds in turn instead of one member's over and over

Starts gunicorn (config.wsgi through bench.bench_settings) on 127.0.0.1, warms the feed once,
then runs wrk for the same duration, alternating for ``--rounds`` rounds, against (1) ``api``:
`GET /api/v1/communities/SLUG/feeds/MEMBER/` with a bearer token, answered by the feed's
ordinary view from one Redis round trip after the first request; (2) ``bare-auth``:
`/bench/bare-auth/`, a Django view that checks the same bearer token as the app API's
authentication does (one indexed query) and returns the same bytes from memory: the goal's
reference; (3) ``bare``: `/bench/bare/`, the same bytes with no authentication at all. All three
run on the same server, behind the same middleware. Reports requests/s, p50 and p99 latency,
the ratios per round and their medians, CPU per request in process, and the load average. The
server runs with COMMONFEED_APP_RATE lifted (``--rate``): every request is still counted against
the credential, but none is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from bench.wsgi import wsgi_get  # noqa: E402
from feeds.credentials.services import app_credential_create  # noqa: E402
from governance.models import Community  # noqa: E402

LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)


def wrk(
    url: str, *, connections: int, seconds: int, token: str | None, script: Path | None = None
) -> dict[str, float]:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if token:
        command[1:1] = ["-H", f"Authorization: Bearer {token}"]
    if script is not None:
        command[1:1] = ["-s", str(script)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    latency = {p: float(v) * scale[u] for p, v, u in LATENCY.findall(out)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rate,
        "p50_ms": latency.get("50", float("nan")),
        "p99_ms": latency.get("99", float("nan")),
        "non_2xx": float(errors.group(1)) if errors else 0.0,
    }


@contextlib.contextmanager
def _server(port: int, workers: int, env: dict[str, str]) -> Iterator[None]:
    """gunicorn serving config.wsgi (as deployed) on ``port`` until the block ends."""
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "config/gunicorn.py",
            "config.wsgi",
            "-b",
            f"127.0.0.1:{port}",
            "-w",
            str(workers),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
    )
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/bench/bare/", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        yield
    finally:
        server.terminate()
        server.wait()


def _get(url: str, token: str) -> bytes:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    return urllib.request.urlopen(request).read()  # type: ignore[no-any-return]


def _rotating_paths_script(paths: list[str]) -> Path:
    """A wrk script that requests ``paths`` in turn."""
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(
        "local paths = {" + ", ".join(json.dumps(p) for p in paths) + "}\n"
        "local i = 0\n"
        "request = function()\n"
        "  i = i + 1\n"
        "  return wrk.format(nil, paths[(i % #paths) + 1])\n"
        "end\n"
    )
    return script


def cpu_probe(api_path: str, token: str, *, requests: int, rounds: int) -> None:
    """CPU seconds per request in this process (run with the server's environment), no network
    and no wrk: the three sides through the deployed WSGI application (``config.wsgi``). CPU
    time is what a saturated server spends; unlike requests/s it barely moves with other load
    on the machine (Redis's and PostgreSQL's own CPU is not in it). Prints JSON."""
    from config.wsgi import application

    def call(path: str, auth: str | None) -> bytes:
        status: list[str] = []
        response = application(wsgi_get(path, auth), lambda s, h: status.append(s))
        body = b"".join(response)
        getattr(response, "close", lambda: None)()
        assert status[0].startswith("200"), status
        return body

    sides = (
        ("api", api_path, token),
        ("bare-auth", "/bench/bare-auth/", token),
        ("bare", "/bench/bare/", None),
    )
    assert len({call(path, auth) for _, path, auth in sides}) == 1
    cpu: dict[str, list[float]] = {name: [] for name, *_ in sides}
    for _ in range(rounds):
        for name, path, auth in sides:
            started = time.process_time()
            for _ in range(requests):
                call(path, auth)
            cpu[name].append((time.process_time() - started) / requests * 1e6)
    print(json.dumps(cpu))


def main() -> None:
    if sys.argv[1:2] == ["--cpu-probe"]:
        cpu_probe(sys.argv[2], sys.argv[3], requests=int(sys.argv[4]), rounds=int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slug")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all sides, alternated")
    parser.add_argument(
        "--cpu-requests", type=int, default=2000, help="requests per round of the CPU probe"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--rate", default="100000000/min", help="COMMONFEED_APP_RATE to serve with")
    parser.add_argument(
        "--members",
        type=int,
        default=1,
        help="pull the feeds of this many members in turn (each warmed once first) instead of "
        "one member's over and over; the bare views still serve the first member's bytes",
    )
    args = parser.parse_args()

    community = Community.objects.get(slug=args.slug)
    members = list(community.memberships.order_by("id")[: args.members])
    assert members, "the community has no members"
    member = members[0]
    _, token = app_credential_create(
        community=community, name=f"bench-{time.time_ns()}", scopes=["feeds:read"]
    )
    base = f"http://127.0.0.1:{args.port}"
    api = f"{base}/api/v1/communities/{args.slug}/feeds/{member.external_id}/"

    body_file = Path(tempfile.mkstemp(suffix=".json")[1])
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bench.bench_settings",
        "BENCH_BARE_BODY": str(body_file),
        "ALLOWED_HOSTS": "127.0.0.1",
        # wrk sends thousands of requests a second from one credential: lift its rate so the
        # run measures feeds, not 429s. Every request is still counted (the INCR stays).
        "COMMONFEED_APP_RATE": args.rate,
    }
    # The bare views must return the very bytes the API returns: fetch them with a first server.
    with _server(args.port, args.workers, env):
        body_file.write_bytes(_get(api, token))
    sides = ("api", "bare-auth", "bare")
    with _server(args.port, args.workers, env):
        assert _get(api, token) == body_file.read_bytes()
        urls = {"api": api, "bare-auth": f"{base}/bench/bare-auth/", "bare": f"{base}/bench/bare/"}
        for name in ("bare-auth", "bare"):
            served = _get(urls[name], token)
            assert served == body_file.read_bytes(), f"{name} must serve the same bytes"
        body = body_file.read_bytes()
        scripts: dict[str, Path | None] = dict.fromkeys(sides)
        if len(members) > 1:
            paths = [f"/api/v1/communities/{args.slug}/feeds/{m.external_id}/" for m in members]
            for path in paths:  # each page through the database path once: Redis has them
                _get(base + path, token)
            # wrk runs the same Lua per request on every side (it costs wrk CPU on the same
            # cores); the bare views ignore the query string.
            scripts["api"] = _rotating_paths_script(paths)
            for name in ("bare-auth", "bare"):
                scripts[name] = _rotating_paths_script(
                    [f"/bench/{name}/?member={m.external_id}" for m in members]
                )
        # Alternate the sides for several rounds: on a shared machine the load drifts, and a
        # ratio of two runs taken minutes apart would measure the drift. The bare side gets the
        # token too: it ignores it, and every side's requests are then the same size.
        rounds: list[dict[str, dict[str, float]]] = []
        for _ in range(args.rounds):
            rounds.append(
                {
                    name: wrk(
                        urls[name],
                        connections=args.connections,
                        seconds=args.seconds,
                        token=token,
                        script=scripts[name],
                    )
                    for name in sides
                }
            )
    print(
        f"{len(members)} member feed(s) in turn, "
        f"{len(body)} bytes per response, {args.connections} connections, "
        f"{args.workers} gunicorn sync workers, {args.rounds} rounds of {args.seconds}s each"
    )
    for i, results in enumerate(rounds, start=1):
        for name, r in results.items():
            print(
                f"round {i} {name:10} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:.2f} ms"
                f"  p99 {r['p99_ms']:.2f} ms  non-2xx {r['non_2xx']:.0f}"
            )
        for name in ("bare-auth", "bare"):
            print(f"round {i} ratio api/{name}: {results['api']['rps'] / results[name]['rps']:.2f}")
    for name in ("bare-auth", "bare"):
        ratios = sorted(r["api"]["rps"] / r[name]["rps"] for r in rounds)
        print(f"median ratio api/{name}: {ratios[len(ratios) // 2]:.2f}")
    p99 = sorted(r["api"]["p99_ms"] for r in rounds)
    print(f"api p99 over rounds: {p99[0]:.2f}-{p99[-1]:.2f} ms, median {p99[len(p99) // 2]:.2f} ms")
    probe = subprocess.run(
        [
            sys.executable,
            __file__,
            "--cpu-probe",
            api.removeprefix(base),
            token,
            str(args.cpu_requests),
            str(args.rounds),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    cpu = json.loads(probe.stdout.strip().splitlines()[-1])
    medians = {name: sorted(values)[args.rounds // 2] for name, values in cpu.items()}
    print(
        f"CPU per request in process (median of {args.rounds} rounds of {args.cpu_requests}): "
        + ", ".join(f"{name} {value:.0f} us" for name, value in medians.items())
        + f"; ratios bare-auth/api {medians['bare-auth'] / medians['api']:.2f}, "
        + f"bare/api {medians['bare'] / medians['api']:.2f}"
    )
    print(f"load average (1, 5, 15 min) after the run: {os.getloadavg()}")


if __name__ == "__main__":
    main()
