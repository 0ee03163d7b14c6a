"""The conditional and range planner both send paths follow: request headers in, the plan out.

The send paths themselves (cache, sendfile, TLS copy, collector.db's copy) run over real
sockets in test_server.py; here the decision alone, as a table.
"""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from slapos_collect_recipe.file_responses import SECURITY_HEADERS, Plan, plan

SIZE = 1000
MTIME = 1_764_000_000  # 2025-11-24 16:00:00 UTC
ETAG = '"18a-3e8"'
LAST_MODIFIED = "Mon, 24 Nov 2025 16:00:00 GMT"
HEADERS = {"Content-Type": "text/csv; charset=utf-8", "ETag": ETAG, "Last-Modified": LAST_MODIFIED,
           "Accept-Ranges": "bytes"}
NOT_MODIFIED = Plan(304, {"ETag": ETAG, "Last-Modified": LAST_MODIFIED})
WHOLE = Plan(200, HEADERS, 0, SIZE)
UNSATISFIABLE = Plan(416, {"Content-Range": f"bytes */{SIZE}", **SECURITY_HEADERS})


def part(start: int, end: int) -> Plan:
    return Plan(206, dict(HEADERS, **{"Content-Range": f"bytes {start}-{end}/{SIZE}"}), start, end - start + 1)


CASES = [
    ({}, WHOLE),
    # If-None-Match: weak comparison, lists, *; it wins over If-Modified-Since
    ({"If-None-Match": ETAG}, NOT_MODIFIED),
    ({"If-None-Match": f"W/{ETAG}"}, NOT_MODIFIED),
    ({"If-None-Match": f'"other", {ETAG}'}, NOT_MODIFIED),
    ({"If-None-Match": "*"}, NOT_MODIFIED),
    ({"If-None-Match": '"other"'}, WHOLE),
    ({"If-None-Match": '"other"', "If-Modified-Since": LAST_MODIFIED}, WHOLE),
    # If-Modified-Since: whole seconds, a date that is no date is ignored
    ({"If-Modified-Since": LAST_MODIFIED}, NOT_MODIFIED),
    ({"If-Modified-Since": "Mon, 24 Nov 2025 16:00:01 GMT"}, NOT_MODIFIED),
    ({"If-Modified-Since": "Mon, 24 Nov 2025 15:59:59 GMT"}, WHOLE),
    ({"If-Modified-Since": "yesterday"}, WHOLE),
    # a current copy answers 304 even to a range
    ({"If-None-Match": ETAG, "Range": "bytes=0-9"}, NOT_MODIFIED),
    # one range
    ({"Range": "bytes=0-9"}, part(0, 9)),
    ({"Range": "bytes=990-"}, part(990, 999)),
    ({"Range": "bytes=990-5000"}, part(990, 999)),
    ({"Range": "bytes= 10 - 19 "}, part(10, 19)),
    # suffix ranges: the last N bytes, all of them when N is larger
    ({"Range": "bytes=-10"}, part(990, 999)),
    ({"Range": "bytes=-5000"}, part(0, 999)),
    ({"Range": "bytes=-0"}, UNSATISFIABLE),
    # unsatisfiable: 416
    ({"Range": "bytes=1000-"}, UNSATISFIABLE),
    ({"Range": "bytes=5000-6000"}, UNSATISFIABLE),
    # several ranges are refused (the whole file), and so is anything malformed
    ({"Range": "bytes=0-9,20-29"}, WHOLE),
    ({"Range": "bytes=0-9, 2000-3000"}, WHOLE),
    ({"Range": "bytes=9-0"}, WHOLE),
    ({"Range": "bytes=-"}, WHOLE),
    ({"Range": "bytes=a-b"}, WHOLE),
    ({"Range": "items=0-9"}, WHOLE),
    ({"Range": "0-9"}, WHOLE),
    # If-Range: the range only while the client's copy (by ETag or by date) is this one
    ({"Range": "bytes=0-9", "If-Range": ETAG}, part(0, 9)),
    ({"Range": "bytes=0-9", "If-Range": f" {LAST_MODIFIED} "}, part(0, 9)),
    ({"Range": "bytes=0-9", "If-Range": '"older"'}, WHOLE),
    ({"Range": "bytes=0-9", "If-Range": "Sun, 23 Nov 2025 16:00:00 GMT"}, WHOLE),
    ({"Range": "bytes=5000-", "If-Range": '"older"'}, WHOLE),
]


@pytest.mark.parametrize(("request_headers", "expected"), CASES, ids=[repr(c[0]) for c in CASES])
def test_plan(request_headers, expected):
    assert plan(CIMultiDict(request_headers), SIZE, HEADERS, ETAG, LAST_MODIFIED, MTIME) == expected


def test_header_names_are_case_insensitive():
    """As aiohttp hands them over: a CIMultiDict."""
    assert plan(CIMultiDict({"range": "bytes=0-9", "if-range": ETAG}), SIZE, HEADERS, ETAG, LAST_MODIFIED,
                MTIME) == part(0, 9)


@pytest.mark.parametrize("request_headers", [
    {"If-None-Match": "*"}, {"If-Modified-Since": LAST_MODIFIED}, {"Range": "bytes=0-9", "If-Range": ""},
    {"Range": "bytes=0-9", "If-Range": " "},
])
def test_no_validators_no_304(request_headers):
    """A file without validators (collector.db's copy; a small file that changed while read)
    is always sent whole: no 304, and an If-Range names none of its validators."""
    assert plan(CIMultiDict(request_headers), SIZE, HEADERS, "", "", MTIME).status == 200


def test_without_ranges_a_range_is_ignored():
    """collector.db's copy: a new file at every request, never in parts."""
    assert plan(CIMultiDict({"Range": "bytes=0-9"}), SIZE, HEADERS, "", "", MTIME, ranges=False) == WHOLE
    assert plan(CIMultiDict({"Range": "bytes=5000-"}), SIZE, HEADERS, "", "", MTIME, ranges=False) == WHOLE


def test_empty_file():
    assert plan(CIMultiDict({"Range": "bytes=0-"}), 0, HEADERS, ETAG, LAST_MODIFIED, MTIME).status == 416
    assert plan(CIMultiDict({"Range": "bytes=-1"}), 0, HEADERS, ETAG, LAST_MODIFIED, MTIME).status == 416
    assert plan(CIMultiDict(), 0, HEADERS, ETAG, LAST_MODIFIED, MTIME) == Plan(200, HEADERS, 0, 0)
