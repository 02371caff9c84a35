# SPDX-License-Identifier: Apache-2.0
"""flowd-go's REST API (GET /, POST /flow, GET /dummy/start|end) on scitagd's api plugin, end to
end with a real daemon: flowd-go's bodies work, every hostile one gets 400/413/415/403/401 with
{"error", "field"}, is counted, never a 500; the rules of scitagd's own API hold for these routes."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scitagd.errors import InputError
from scitagd.sources.flowdgo_api import flow_from_flowid, flowid_json, parse_addrport

from ..hostile.daemon_helpers import PROBE_SRC_PORT, Stack, clean_log, recv_flows, stack
from ..hostile.test_daemon_api import request

__all__ = ["stack"]

API = "  api: {{bindPort: {api}}}\n"
TOKEN = "s3cr3t-token-0123456789abcdef"
# the reference's valid body (flowd-go.md 2.1), addresses on loopback
VALID = {"State": 2, "Protocol": 0, "Family": 10, "Src": "[::1]:2345", "Dst": "[::1]:5777", "Experiment": 1,
         "Activity": 2, "Application": "x"}


def flowid(**kw: Any) -> Dict[str, Any]:
    base: Dict[str, Any] = {"State": 2, "Protocol": 0, "Family": 2, "Src": "127.0.0.1:1094", "Dst": "127.0.0.2:45000",
                            "Experiment": 2, "Activity": 3}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not ...}


def post(port: int, body: Any = None, raw: Optional[bytes] = None,
         headers: Optional[Dict[str, Optional[str]]] = None) -> Tuple[int, Any]:
    return request(port, "POST", "/flow", raw if raw is not None else json.dumps(body).encode(), headers)


def test_root_lists_the_routes(stack: Callable[..., Stack]) -> None:
    s = stack(API)
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", s.api, timeout=5)
    c.request("GET", "/")
    r = c.getresponse()
    text = r.read().decode()
    assert r.status == 200 and text.startswith('{\n    "ApiRoutes": [\n        {\n')
    routes = {(x["method"], x["path"]) for x in json.loads(text)["ApiRoutes"]}
    assert {("GET", "/"), ("POST", "/flow"), ("GET", "/dummy/start"), ("GET", "/dummy/end"),
            ("POST", "/api/v1/flows")} <= routes


def test_flowd_go_bodies_start_and_end_flows(stack: Callable[..., Stack]) -> None:
    s = stack(API)
    status, out = post(s.api, flowid(Application="xrootd"))
    assert status == 200, out
    assert out["State"] == 2 and out["Src"] == "127.0.0.1:1094" and out["Family"] == 2
    assert out["StartTs"].endswith("Z") and out["EndTs"] == "0001-01-01T00:00:00Z" and out["Info"] == {"tcpInfo": None}
    # lower-case names bind as they do in Go; Protocol and Family left out: tcp, from the addresses
    status, out = post(s.api, {"state": 3, "src": "127.0.0.1:1094", "dst": "127.0.0.2:45000", "experiment": 2,
                               "activity": 3, "StartTs": "0001-01-01T00:00:00Z"})
    assert status == 200 and out["State"] == 3, out
    # the reference's own valid body (IPv6 on loopback) and flowd-go's StartTs given by the caller
    status, out = post(s.api, {**VALID, "StartTs": "2026-11-25T16:29:49.407015+00:00"})
    assert status == 200 and out["Src"] == "[::1]:2345" and out["StartTs"] == "2026-11-25T16:29:49.407015Z"
    seen = recv_flows(s.rx, [("start", 1094), ("end", 1094), ("start", 2345)])
    assert seen == {("start", 1094): 1, ("end", 1094): 1, ("start", 2345): 1}


def test_dummy_start_and_end(stack: Callable[..., Stack]) -> None:
    s = stack(API)
    status, out = request(s.api, "GET", "/dummy/start")
    assert status == 200 and out["Src"] == "[::1]:2345" and out["Dst"] == "[::1]:5777"
    assert (out["Experiment"], out["Activity"]) == (511, 63) and out["Application"].startswith("scitagd-")
    status, out = request(s.api, "GET", "/dummy/end")
    assert status == 200 and out["State"] == 3
    docs = [json.loads(d[d.index(b"{"):]) for d in s.rx.recv(20, timeout=2)]
    docs = [d for d in docs if d["flow-id"]["src-port"] != PROBE_SRC_PORT]
    assert [(d["flow-lifecycle"]["state"], d["flow-id"]["src-port"], d["context"]["experiment-id"]) for d in docs] == [
        ("start", 2345, 511), ("end", 2345, 511)]
    # a page of another site cannot make a browser start one
    status, out = request(s.api, "GET", "/dummy/start", headers={"Sec-Fetch-Site": "cross-site"})
    assert status == 403 and out["field"] == "Sec-Fetch-Site"
    assert s.rejected("api") == {"cross_site": 1}


# (name, body or raw bytes, extra headers, status, field, reason)
Case = Tuple[str, Any, Optional[Dict[str, Optional[str]]], int, Optional[str], str]
CASES: List[Case] = [
    ("State missing", flowid(State=...), None, 400, "State", "missing_field"),
    ("State ongoing", flowid(State=4), None, 400, "State", "bad_state"),
    ("State 0 (Go's zero)", flowid(State=0), None, 400, "State", "bad_state"),
    ("State true", flowid(State=True), None, 400, "State", "bad_state"),
    ("State '2'", flowid(State="2"), None, 400, "State", "bad_state"),
    ("Protocol 6", flowid(Protocol=6), None, 400, "Protocol", "bad_protocol"),
    ("Family 0", flowid(Family=0), None, 400, "Family", "bad_family"),
    ("Family not the address's", flowid(Family=10), None, 400, "Src", "bad_address"),
    ("old {IP, Port} form", flowid(Src={"IP": "127.0.0.1", "Port": 1094}), None, 400, "Src", "bad_address"),
    ("IPv6 without brackets", flowid(Src="::1:2345", Family=...), None, 400, "Src", "bad_address"),
    ("IPv4 in brackets", flowid(Src="[127.0.0.1]:2345"), None, 400, "Src", "bad_address"),
    ("zone", flowid(Src="[fe80::1%eth0]:2345", Family=...), None, 400, "Src", "bad_address"),
    ("port 0", flowid(Dst="127.0.0.2:0"), None, 400, "Dst", "bad_port"),
    ("port 70000", flowid(Dst="127.0.0.2:70000"), None, 400, "Dst", "bad_port"),
    ("families differ", flowid(Dst="[::1]:80", Family=...), None, 400, "Dst", "bad_address"),
    ("Experiment 0", flowid(Experiment=0), None, 400, "Experiment", "bad_experiment"),
    ("Experiment 65535", flowid(Experiment=65535), None, 400, "Experiment", "bad_experiment"),
    ("Experiment -1", flowid(Experiment=-1), None, 400, "Experiment", "bad_experiment"),
    ("Activity 64", flowid(Activity=64), None, 400, "Activity", "bad_activity"),
    ("Activity 2.0", flowid(Activity=2.0), None, 400, "Activity", "bad_activity"),
    ("Application 0", flowid(Application=0), None, 400, "Application", "bad_application"),
    ("StartTs junk", flowid(StartTs="yesterday"), None, 400, "StartTs", "bad_time"),
    ("StartTs 1970", flowid(StartTs="1970-01-01T00:00:00Z"), None, 400, "StartTs", "bad_time"),
    ("Info a string", flowid(Info="x"), None, 400, "Info", "bad_info"),
    ("unknown field", flowid(Bogus=1), None, 400, "Bogus", "unknown_field"),
    ("State twice", {**flowid(), "state": 3}, None, 400, "State", "duplicate_field"),
    ("array body", b"[1,2]", None, 400, None, "malformed_json"),
    ("not JSON", b"State=2", None, 400, None, "malformed_json"),
    ("nested", b'{"Info":' + b"[" * 5000 + b"]" * 5000 + b"}", None, 400, None, "too_deep"),
    ("too large", b"{" + b" " * 20000 + b"}", None, 413, None, "too_large"),
    ("no Content-Type", flowid(), {"Content-Type": None}, 415, "Content-Type", "bad_content_type"),
    ("form", flowid(), {"Content-Type": "application/x-www-form-urlencoded"}, 415, "Content-Type",
     "bad_content_type"),
    ("foreign Host", flowid(), {"Host": "evil.example"}, 403, "Host", "bad_host"),
]


def test_hostile_flowids(stack: Callable[..., Stack]) -> None:
    s = stack(API)
    expected: Counter[str] = Counter()
    bad = []
    for name, body, headers, status, field, reason in CASES:
        raw = body if isinstance(body, bytes) else None
        got, out = post(s.api, None if raw is not None else body, raw, headers)
        expected[reason] += 1
        if (got, isinstance(out, dict) and out.get("field")) != (status, field) or not out.get("error"):
            bad.append((name, got, out))
    assert not bad, bad
    assert s.rejected("api") == dict(expected)
    status, _ = post(s.api, flowid(Src="127.0.0.1:9999"))
    assert status == 200 and recv_flows(s.rx, [("start", 9999)]) == {("start", 9999): 1}
    clean_log(s.d.log())


def test_token_holds_for_flowd_go_routes(stack: Callable[..., Stack]) -> None:
    s = stack("  api: {{bindPort: {api}, token: " + TOKEN + "}}\n")
    for method, path in (("POST", "/flow"), ("GET", "/dummy/start"), ("GET", "/")):
        body = json.dumps(flowid()).encode() if method == "POST" else None
        status, out = request(s.api, method, path, body)
        assert status == 401 and out["field"] == "Authorization", (path, status, out)
    status, out = request(s.api, "POST", "/flow", json.dumps(flowid()).encode(),
                          {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200, out


flowid_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.sampled_from(["127.0.0.1:80", "[::1]:80", "2026-11-25T16:29:49Z", "0001-01-01T00:00:00Z"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["State", "state", "Protocol", "Family", "Src", "Dst", "Experiment", "Activity",
                                        "StartTs", "EndTs", "CurrentTs", "Info", "Application", "x"]),
                       flowid_values, max_size=12))
def test_any_flowid_is_a_flow_or_an_input_error(body: Dict[str, Any]) -> None:
    try:
        ev = flow_from_flowid({**flowid(), **body})
    except InputError as e:
        assert e.reason and str(e)
        return
    doc = flowid_json(ev)
    assert doc["State"] in (2, 3) and parse_addrport("Src", doc["Src"])[1] == ev.src_port


def test_echo_is_go_shaped() -> None:
    ev = flow_from_flowid(dict(VALID))
    doc = flowid_json(ev)
    assert list(doc) == ["State", "Protocol", "Family", "Src", "Dst", "Experiment", "Activity", "StartTs", "EndTs",
                         "CurrentTs", "Info", "Application"]
    assert (doc["Src"], doc["Dst"], doc["Application"]) == ("[::1]:2345", "[::1]:5777", "x")


@pytest.mark.parametrize("text", ["1.2.3.4:5", "[2001:db8::1]:65535"])
def test_addrport_round_trip(text: str) -> None:
    host, port = parse_addrport("Src", text)
    assert (f"[{host}]" if ":" in host else host) + f":{port}" == text
