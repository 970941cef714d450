"""``import`` on a real Redis: every row through the worker's link rules (the reference model
decides the same), provenance and one feed entry per applied link, bad rows reported by
line, a dry run that decides the same without writing, and a re-run or a killed-and-re-run
import that ends exactly as one run."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from resolver import LinkOutcome, Resolver
from resolver.feed import fold, read_changes
from resolver.provenance import parse_provenance
from tests.conftest import ROOT
from tests.helpers import settings
from tests.model import AliasModel
from tests.redis_proc import RedisServer
from tests.test_cli import cli
from worker import ops
from worker.ops import transfer
from worker.ops.import_rows import Row
from worker.ops.importing import Importer

pytestmark = pytest.mark.redis_server

FEED = "alias:changes"


def admin(server: RedisServer, **overrides: Any) -> Any:
    return settings(redis_url=server.admin_url, **overrides)


def links(c: redis.Redis, tenant: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in c.hgetall(f"alias:{tenant}").items()}


def sources(c: redis.Redis, tenant: str) -> dict[str, str]:
    found = c.hgetall(f"alias:{tenant}:provenance").items()
    return {k.decode(): parse_provenance(v).source_id for k, v in found}  # type: ignore[union-attr]


def sha12(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def no_denials(c: redis.Redis) -> None:
    assert c.acl_log() == [], "Redis refused stitch-admin something"


def summary(out: str) -> dict[str, int]:
    """The summary's outcome table: {outcome: rows}."""
    rows = [line.split() for line in out.splitlines()[2:]]
    return {name: int(n.replace(",", "")) for name, n in rows}


def random_rows(seed: int, n: int, ids: int) -> list[tuple[str, str]]:
    """Links among few ids (conflicts, cycles, chains at the cap) plus placeholders."""
    rng = random.Random(seed)
    pool = [f"u{k}" for k in range(ids)] + ["null", "anonymous"]
    return [(rng.choice(pool), rng.choice(pool)) for _ in range(n)]


def test_each_row_goes_through_the_worker_rules_with_provenance_and_one_feed_entry(
    redis_server: RedisServer,
    real_redis: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """600 random rows over 40 ids, chunks of 7 rows (so rows depend on earlier chunks'
    links): the map, each outcome count and each link's source line equal the model's; the
    feed holds exactly the applied links; a second run applies nothing and writes nothing."""
    monkeypatch.setattr(transfer, "CHUNK", 7)
    c = real_redis
    rows = random_rows(1, 600, 40)
    file = tmp_path / "links.csv"
    file.write_text("".join(f"{p},{u}\n" for p, u in rows))
    model = AliasModel(cap=3)
    for line, (prev, user) in enumerate(rows, start=1):
        model.link("acme", prev, user, f"import:{sha12(file)}:{line}")
    config = admin(redis_server, max_chain_depth=3)
    assert ops.import_links(config, tenant="acme", path=str(file), fmt=None, dry_run=False) == 0
    assert summary(capsys.readouterr().out) == dict(model.outcomes)
    assert links(c, "acme") == model.snapshot("acme")
    assert sources(c, "acme") == {p: s for (_, p), s in model.sources.items()}
    changes = list(read_changes(c, FEED))
    assert len(changes) == model.outcomes["applied"]
    assert fold(changes) == {"acme": model.snapshot("acme")}
    assert {ch.root for ch in changes} <= set(model.snapshot("acme").values())
    before = (c.xlen(FEED), c.hgetall("alias:acme:provenance"), c.hgetall("alias:acme:heights"))
    assert ops.import_links(config, tenant="acme", path=str(file), fmt=None, dry_run=False) == 0
    assert "applied" not in summary(capsys.readouterr().out)
    after = (c.xlen(FEED), c.hgetall("alias:acme:provenance"), c.hgetall("alias:acme:heights"))
    assert after == before
    no_denials(c)


def test_bad_rows_are_reported_by_line_and_the_rest_applied(
    redis_server: RedisServer,
    real_redis: redis.Redis,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """CSV with a header (extra columns ignored, as in an export) and JSON lines: each bad
    row is named by its line; every good row is applied, with the file's time as applied_at."""
    c = real_redis
    csv_file = tmp_path / "links.csv"
    csv_file.write_text(
        "root,previous_user_id,user_id,applied_at\n"
        "x,a1,c1,2026-01-02T03:04:05Z\n"
        "x,a2\n"
        "\n"
        f"x,{'a' * 300},c1,\n"
        "x,a3,c1,yesterday\n"
        "x,a4,c1,1700000000000\n"
        "x,,c1,\n"
    )
    config = admin(redis_server)
    assert ops.import_links(config, tenant="acme", path=str(csv_file), fmt=None, dry_run=False) == 0
    err = capsys.readouterr().err.splitlines()
    assert [e for e in err if e.startswith(str(csv_file))] == [
        f"{csv_file}:3: 2 columns, fewer than the header names",
        f"{csv_file}:5: previous_user_id is 300 bytes, more than 256",
        f"{csv_file}:6: timestamp 'yesterday' is neither milliseconds since the epoch nor ISO 8601",
        f"{csv_file}:8: previous_user_id is empty",
    ]
    assert links(c, "acme") == {"a1": "c1", "a4": "c1"}
    stamps = {
        k.decode(): v.decode().split(" ") for k, v in c.hgetall("alias:acme:provenance").items()
    }
    assert stamps["a1"][1:] == ["1767323045000", "lehnz-stitch-import"]
    assert stamps["a4"][:2] == [f"import:{sha12(csv_file)}:7", "1700000000000"]
    jsonl = tmp_path / "links.jsonl"
    jsonl.write_text(
        '{"previous_user_id": "b1", "user_id": "c2", "other": 1}\n'
        "not json\n"
        '["b2", "c2"]\n'
        '{"previous_user_id": "b3", "user_id": 7}\n'
        '{"previous_user_id": "b4", "user_id": "c2", "timestamp": 1700000000001}\n'
    )
    assert ops.import_links(config, tenant="acme", path=str(jsonl), fmt=None, dry_run=False) == 0
    captured = capsys.readouterr()
    reported = [e.split(": ")[0] for e in captured.err.splitlines() if e.startswith(str(jsonl))]
    assert reported == [f"{jsonl}:2", f"{jsonl}:3", f"{jsonl}:4"]
    assert summary(captured.out) == {"applied": 2, "invalid": 3}
    assert links(c, "acme") == {"a1": "c1", "a4": "c1", "b1": "c2", "b4": "c2"}
    no_denials(c)


def test_dry_run_decides_as_the_real_run_and_leaves_nothing(
    redis_server: RedisServer,
    real_redis: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Chunks of 5 rows: later chunks see the links earlier ones would apply (conflicts,
    cycles, the cap across chunks), so the dry run's summary is the real run's; afterwards
    Redis holds exactly what it held before (no scratch hash left)."""
    monkeypatch.setattr(transfer, "CHUNK", 5)
    c = real_redis
    c.hset("alias:acme", "u1", "u2")  # an existing link (heights, sizes measured by the import)
    file = tmp_path / "links.csv"
    file.write_text("".join(f"{p},{u}\n" for p, u in random_rows(2, 300, 30)))
    config = admin(redis_server, max_chain_depth=4)
    keys = sorted(c.keys("*"))
    assert ops.import_links(config, tenant="acme", path=str(file), fmt=None, dry_run=True) == 0
    dry = capsys.readouterr().out
    assert sorted(c.keys("*")) == [*keys, b"alias:acme:heights", b"alias:acme:sizes"]
    assert c.hlen("alias:acme") == 1 and c.xlen(FEED) == 0
    assert ops.import_links(config, tenant="acme", path=str(file), fmt=None, dry_run=False) == 0
    real = capsys.readouterr().out
    assert dry.replace("would import", "imported") == real
    assert {"applied", "conflict", "cycle", "too_deep", "placeholder"} <= set(summary(real))
    no_denials(c)


def test_import_killed_mid_way_and_run_again_ends_as_one_run(
    redis_server: RedisServer, real_redis: redis.Redis, tmp_path: Path
) -> None:
    """SIGKILL once the first links are in: whole chunks only (the re-run finds a multiple
    of the chunk already applied: every row of the file applies); the re-run ends with the map,
    provenance and feed of a single run into another tenant, each link in the feed once."""
    c = real_redis
    file = tmp_path / "links.csv"
    file.write_text("".join(f"anon-{k},cust-{k // 3}\n" for k in range(30_000)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STITCH_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "import", "--tenant", "acme", str(file)],
        env={**env, "STITCH_REDIS_URL": redis_server.admin_url},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert c.xread({FEED: "0-0"}, count=1, block=60_000)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    url = {"STITCH_REDIS_URL": redis_server.admin_url}
    again = cli("import", "--tenant", "acme", str(file), env=url)
    assert again.returncode == 0, again.stderr
    # the killed run's last pipelined chunks may still run after the kill: count them here
    done = summary(again.stdout)
    assert done.keys() <= {"applied", "noop"} and sum(done.values()) == 30_000
    assert done.get("noop", 0) > 0 and done.get("noop", 0) % transfer.CHUNK == 0
    once = cli("import", "--tenant", "ref", str(file), env=url)
    assert once.returncode == 0, once.stderr
    assert links(c, "acme") == links(c, "ref")
    assert sources(c, "acme") == sources(c, "ref")
    assert c.hgetall("alias:acme:heights") == c.hgetall("alias:ref:heights")
    feed = [ch for ch in read_changes(c, FEED) if ch.tenant == "acme"]
    assert sorted(ch.previous_user_id for ch in feed) == sorted(links(c, "acme"))
    no_denials(c)


def test_import_command_line(redis_server: RedisServer, real_redis: redis.Redis) -> None:
    """--help shows an example; a missing file or a bad tenant is exit 2 naming it."""
    assert "lehnz-stitch import --tenant acme links.csv" in cli("import", "--help").stdout
    url = {"STITCH_REDIS_URL": redis_server.admin_url}
    missing = cli("import", "--tenant", "acme", "nope.csv", env=url)
    assert (missing.returncode, missing.stderr) == (2, "lehnz-stitch: nope.csv: no such file\n")
    bad = cli("import", "--tenant", "a:b", "README.md", env=url)
    assert bad.returncode == 2 and "--tenant 'a:b'" in bad.stderr


def test_import_respects_blocks_and_tombstones(
    redis_server: RedisServer, real_redis: redis.Redis, tmp_path: Path
) -> None:
    """A link blocked by unlink --block and the ids of a forgotten person are refused to an
    import exactly as to the worker (outcomes blocked and forgotten); an import into a tenant
    with tombstones but without STITCH_TOMBSTONE_KEY is refused before it writes anything."""
    c = real_redis
    library = Resolver(c, tombstone_key=b"k")
    assert library.link("acme", "a1", "c1") is LinkOutcome.APPLIED
    assert library.link("acme", "gone-1", "gone-2") is LinkOutcome.APPLIED
    library.unlink("acme", "a1", block=True)
    library.forget("acme", "gone-2")
    rows = tmp_path / "rows.csv"
    rows.write_text("a1,c1\ngone-1,fresh\na2,c1\n")
    keyed = admin(redis_server, tombstone_key="k")
    importer = Importer(c, keyed, "acme", "t", dry_run=False)
    importer.start(keyed.max_chain_depth)
    asked = [("a1", "c1"), ("gone-1", "x"), ("a2", "c1")]
    [outcomes] = importer.apply([[Row(n, p, u, None) for n, (p, u) in enumerate(asked, 1)]])
    assert outcomes == ["blocked", "forgotten", "applied"]
    assert links(c, "acme") == {"a2": "c1"}
    unkeyed = Importer(c, admin(redis_server), "acme", "t", dry_run=False)
    unkeyed.start(keyed.max_chain_depth)
    with pytest.raises(redis.ResponseError, match="STITCH_TOMBSTONE_KEY"):
        unkeyed.apply([[Row(1, "a3", "c1", None)]])
    assert links(c, "acme") == {"a2": "c1"}
