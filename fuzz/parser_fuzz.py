"""The parser under atheris (coverage-guided, libFuzzer): ``make fuzz``, not part of make test.

Any exception is a finding, and so is a broken invariant: every entry is an event, an
identify or invalid with a declared dead-letter code, and nothing accepted exceeds a bound.
Run by hand: ``.venv/bin/python fuzz/parser_fuzz.py -max_total_time=60 .fuzz-corpus``.
"""

from __future__ import annotations

import json
import sys

import atheris

with atheris.instrument_imports(include=["worker"]):
    from worker.metrics import DEAD_LETTER_REASONS
    from worker.parser import TENANT_RE, Kind, Parser, json_depth

MAX_EVENT, MAX_FIELDS, MAX_ID, MAX_DEPTH = 4096, 16, 64, 32
PARSER = Parser(
    MAX_EVENT,
    max_entry_bytes=MAX_EVENT + 1024,
    max_fields=MAX_FIELDS,
    max_id_bytes=MAX_ID,
    max_json_depth=MAX_DEPTH,
)
NAMES = ["identify", "view", "purchase"]


def _fields(fdp: atheris.FuzzedDataProvider) -> list[bytes]:
    mode = fdp.ConsumeIntInRange(0, 2)
    if mode == 0:  # any bytes as the event: the JSON paths
        return [b"tenant", b"acme", b"event", fdp.ConsumeBytes(fdp.remaining_bytes())]
    if mode == 1:  # a well-formed event around fuzzed ids and nesting: the bounds
        depth = fdp.ConsumeIntInRange(0, 40)
        body = {
            "event_family": "system" if fdp.ConsumeBool() else fdp.ConsumeUnicode(4),
            "event_name": NAMES[fdp.ConsumeIntInRange(0, 2)],
            "user_id": fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 80)),
            "previous_user_id": fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 80)),
        }
        raw = json.dumps(body)[:-1] + ', "p": ' + "[" * depth + "]" * depth + "}"
        return [b"tenant", fdp.ConsumeBytes(8), b"event", raw.encode("utf-8", "surrogatepass")]
    n = fdp.ConsumeIntInRange(0, 2 * MAX_FIELDS + 4)  # any fields, any names
    return [fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300)) for _ in range(2 * n)]


def one_input(data: bytes) -> None:
    fields = _fields(atheris.FuzzedDataProvider(data))
    entry = PARSER.parse(b"1-0", fields)
    if entry.kind is Kind.INVALID:
        assert entry.error_code in DEAD_LETTER_REASONS, entry.error_code
        assert entry.error.startswith(entry.error_code + ": ")
        return
    assert entry.kind in (Kind.EVENT, Kind.IDENTIFY)
    assert len(fields) <= 2 * MAX_FIELDS
    assert sum(map(len, fields)) <= MAX_EVENT + 1024
    assert TENANT_RE.match(entry.tenant.encode())
    for uid in (entry.user_id, entry.previous_user_id):
        assert len(uid.encode()) <= MAX_ID  # encodes: no lone surrogate reaches Redis
    assert entry.user_id
    assert (entry.kind is Kind.IDENTIFY) == bool(entry.previous_user_id)
    pairs = dict(zip(fields[::2], fields[1::2], strict=False))
    event = pairs[b"event"]
    assert len(event) <= MAX_EVENT and json_depth(event) <= MAX_DEPTH


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
