"""Routing decisions: origin choice, region affinity, and consistent hashing with bounded loads."""

from __future__ import annotations

import math
import random
import subprocess
import sys
from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.placement.choice import choose_edge, choose_origin, healthy, in_region
from common.placement.hashing import Ring, bounded_capacity, pick_bounded, ring_for, stable_hash
from common.registry.base import NodeInfo, StreamClaim
from tests.helpers import node_info as node


def claim(key: str, origin: str) -> StreamClaim:
    return StreamClaim(key, origin, f"rtmp://{origin}.test:1935/{key}", 1, 0.0)


def edges_of(n: int, prefix: str = "edge") -> list[NodeInfo]:
    return [node(f"{prefix}-{i}") for i in range(n)]


def with_load(nodes: dict[str, NodeInfo], node_id: str, delta: int) -> None:
    current = nodes[node_id]
    nodes[node_id] = replace(current, load=replace(current.load, viewers=current.load.viewers + delta))


# -- healthy / choose_origin -------------------------------------------------------------------------


def test_healthy_filters_role_and_draining() -> None:
    nodes = [node("a", "origin"), node("b", "origin", draining=True), node("c", "edge")]
    assert [n.id for n in healthy(nodes, "origin")] == ["a"]
    assert [n.id for n in healthy(nodes, "edge")] == ["c"]
    assert healthy([], "edge") == []


def test_origin_owner_wins_over_less_loaded() -> None:
    origins = [node("o1", "origin", streams=50), node("o2", "origin", streams=0)]
    assert choose_origin(origins, claim("live/x", "o1"), None) == origins[0]
    # Also across regions: the holder of the stream is the only place it can be published.
    assert choose_origin(origins, claim("live/x", "o1"), "us") == origins[0]


def test_a_draining_owner_is_passed_over_for_one_that_can_take_the_claim_over() -> None:
    origins = [node("o1", "origin", draining=True), node("o2", "origin")]
    assert choose_origin(origins, claim("live/x", "o1"), None) == origins[1]


def test_origin_stale_claim_falls_back_to_least_loaded() -> None:
    origins = [node("o1", "origin", streams=3), node("o2", "origin", streams=1)]
    assert choose_origin(origins, claim("live/x", "gone"), None) == origins[1]


def test_origin_least_loaded_by_streams_viewers_bits_then_id() -> None:
    o = [
        node("o1", "origin", streams=2),
        node("o2", "origin", streams=1, viewers=9),
        node("o3", "origin", streams=1, viewers=3, bits=5e6),
        node("o4", "origin", streams=1, viewers=3, bits=1e6),
        node("o0", "origin", streams=1, viewers=3, bits=1e6),
    ]
    assert choose_origin(o, None, None) == o[4]  # ties on load broken by id
    assert choose_origin(o[:4], None, None) == o[3]
    assert choose_origin(o[:3], None, None) == o[2]
    assert choose_origin(list(reversed(o)), None, None) == o[4]  # input order does not matter


def test_origin_region_preference_and_fallback() -> None:
    origins = [node("eu1", "origin", "eu", streams=5), node("us1", "origin", "us", streams=0)]
    assert choose_origin(origins, None, "eu") == origins[0]
    assert choose_origin(origins, None, "us") == origins[1]
    assert choose_origin(origins, None, "ap") == origins[1]  # no origin there: least loaded anywhere
    assert choose_origin(origins, None, None) == origins[1]


def test_origin_draining_excluded() -> None:
    origins = [node("o1", "origin", draining=True), node("o2", "origin", streams=9)]
    assert choose_origin(origins, None, None) == origins[1]
    # The only origin of the region is draining: fall back to other regions.
    origins = [node("eu1", "origin", "eu", draining=True), node("us1", "origin", "us", streams=9)]
    assert choose_origin(origins, None, "eu") == origins[1]
    assert choose_origin([node("o1", "origin", draining=True)], None, None) is None
    assert choose_origin([], None, None) is None


def test_origin_ignores_edges() -> None:
    assert choose_origin([node("e1", "edge")], None, None) is None


# -- choose_edge: regions and health -----------------------------------------------------------------


def test_edge_region_first() -> None:
    edges = [node("eu1", region="eu"), node("eu2", region="eu"), node("us1", region="us")]
    for i in range(50):
        assert choose_edge(f"live/s{i}", edges, "us") == edges[2]
        chosen = choose_edge(f"live/s{i}", edges, "eu")
        assert chosen is not None and chosen.region == "eu"


def test_edge_region_fallback_to_all_healthy() -> None:
    edges = [node("eu1", region="eu"), node("us1", region="us", draining=True), node("us2", region="us")]
    seen = {choose_edge(f"live/s{i}", edges, "ap") for i in range(200)}
    assert {n.id for n in seen if n is not None} == {"eu1", "us2"}
    assert choose_edge("live/x", edges, "us") == edges[2]
    # The region's edges all draining: fall back to the healthy rest.
    drained = [node("eu1", region="eu"), node("us1", region="us", draining=True)]
    assert choose_edge("live/x", drained, "us") == drained[0]


def test_edge_none_when_no_healthy_edge() -> None:
    assert choose_edge("live/x", [], None) is None
    assert choose_edge("live/x", [node("e1", draining=True)], "eu") is None
    assert choose_edge("live/x", [node("o1", "origin")], None) is None


# -- region fallback lists ---------------------------------------------------------------------------

WORLD = [node("eu1", region="eu"), node("us1", region="us"), node("ap1", region="ap"), node("sa1", region="sa")]
FALLBACK = {"eu": ("ap", "us"), "ap": ("us", "*"), "sa": ("us",)}


def ids(nodes: list[NodeInfo]) -> list[str]:
    return [n.id for n in nodes]


def test_in_region_follows_the_operators_list_in_order() -> None:
    assert ids(in_region(WORLD, "eu", FALLBACK)) == ["eu1"]  # the region itself first
    no_eu = [n for n in WORLD if n.region != "eu"]
    assert ids(in_region(no_eu, "eu", FALLBACK)) == ["ap1"]  # then its first choice, not the others
    assert ids(in_region([n for n in no_eu if n.region != "ap"], "eu", FALLBACK)) == ["us1"]
    assert in_region([node("sa1", region="sa")], "eu", FALLBACK) == []  # the list ends: sa is not on it
    assert ids(in_region([node("sa1", region="sa")], "ap", FALLBACK)) == ["sa1"]  # '*': then anywhere


def test_in_region_without_a_list_or_region_is_as_before() -> None:
    no_us = [n for n in WORLD if n.region != "us"]
    assert ids(in_region(no_us, "us", FALLBACK)) == ids(no_us)  # no list for us: every node
    assert ids(in_region(WORLD, None, FALLBACK)) == ids(WORLD)  # no region: every node
    assert ids(in_region(no_us, "us")) == ids(no_us)


def test_edges_fall_back_along_the_list_for_every_stream() -> None:
    edges = [node("eu1", region="eu", draining=True), node("us1", region="us"), node("ap1", region="ap")]
    for i in range(100):
        chosen = choose_edge(f"live/s{i}", edges, "eu", fallback={"eu": ("ap", "us")})
        assert chosen is not None and chosen.id == "ap1"
    # Without the list the same streams spread over every healthy edge.
    assert {choose_edge(f"live/s{i}", edges, "eu") for i in range(100)} == {edges[1], edges[2]}
    assert choose_edge("live/x", edges[:1], "eu", fallback={"eu": ("ap", "us")}) is None


def test_origins_fall_back_along_the_list_but_the_claim_holder_still_wins() -> None:
    origins = [
        node("eu1", "origin", "eu", draining=True),
        node("us1", "origin", "us", streams=0),
        node("ap1", "origin", "ap", streams=9),
    ]
    fallback = {"eu": ("ap", "us")}
    assert choose_origin(origins, None, "eu", fallback) == origins[2]  # the list, not the least loaded
    assert choose_origin(origins, None, "eu") == origins[1]  # no list: least loaded anywhere, as before
    assert choose_origin(origins, claim("live/x", "us1"), "eu", fallback) == origins[1]
    assert choose_origin(origins[:1], None, "eu", fallback) is None


regions = st.sampled_from(["eu", "us", "ap", "sa", "af"])


@settings(max_examples=300, deadline=None)
@given(
    present=st.lists(st.tuples(regions, st.booleans()), max_size=8),
    region=regions | st.none(),
    order=st.lists(regions, unique=True, max_size=4),
    anywhere=st.booleans(),
)
def test_in_region_picks_the_first_listed_region_that_has_nodes(
    present: list[tuple[str, bool]], region: str | None, order: list[str], anywhere: bool
) -> None:
    nodes = [node(f"n{i}", region=r, draining=d) for i, (r, d) in enumerate(present)]
    up = healthy(nodes, "edge")
    chain = tuple(r for r in order if r != region) + (("*",) if anywhere else ())
    fallback = {} if region is None else {region: chain}
    got = in_region(up, region, fallback)
    assert all(n in up for n in got)  # never a draining node
    if region is None:
        assert got == up
        return
    with_nodes = [r for r in (region, *chain) if r == "*" or any(n.region == r for n in up)]
    if not with_nodes:
        assert got == []  # the list is exhausted: no region the operator left out
    elif with_nodes[0] == "*":
        assert got == up
    else:
        assert got and {n.region for n in got} == {with_nodes[0]}
        assert got == [n for n in up if n.region == with_nodes[0]]


def test_edge_draining_never_chosen() -> None:
    edges = [*edges_of(6), node("drain", draining=True)]
    assert all(choose_edge(f"live/{i}", edges, None) != edges[-1] for i in range(300))


# -- ring --------------------------------------------------------------------------------------------


def test_stable_hash_is_stable_across_processes() -> None:
    code = "from common.placement.hashing import stable_hash; print(stable_hash('live/x'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(other.stdout) == stable_hash("live/x")
    assert 0 <= stable_hash("") < 2**64


def test_ring_walk_visits_each_member_once() -> None:
    ring = Ring(["a", "b", "c", "b"], vnodes=8)
    assert ring.members == ("a", "b", "c")
    order = list(ring.walk("live/x"))
    assert sorted(order) == ["a", "b", "c"]
    assert ring.home("live/x") == order[0]
    assert list(Ring([]).walk("x")) == [] and Ring([]).home("x") is None
    with pytest.raises(ValueError):
        Ring(["a"], vnodes=0)


def test_ring_cache_ignores_member_order() -> None:
    assert ring_for(["b", "a", "c"]) is ring_for(["c", "b", "a"])
    assert ring_for(["a", "b"], 8) is not ring_for(["a", "b"], 16)


def test_pick_bounded_spills_to_next_member() -> None:
    ring = Ring(["a", "b", "c"], vnodes=16)
    order = list(ring.walk("live/x"))
    home, second, third = order
    assert pick_bounded(ring, "live/x", {}) == home
    # total 10 -> capacity ceil(1.25 * 11 / 3) = 5: a full home spills to the next one on the ring.
    assert bounded_capacity(10, 3, 0.25) == 5
    assert pick_bounded(ring, "live/x", {home: 5, second: 5, third: 0}) == third
    assert pick_bounded(ring, "live/x", {home: 5, second: 1, third: 4}) == second
    assert pick_bounded(Ring([]), "live/x", {}) is None
    with pytest.raises(ValueError):
        pick_bounded(ring, "live/x", {}, epsilon=-0.1)


# -- choose_edge: properties -------------------------------------------------------------------------

edge_ids = st.lists(st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12), unique=True)
stream_keys = st.lists(st.from_regex(r"live/[a-z0-9]{1,10}", fullmatch=True), min_size=1, max_size=30, unique=True)


@settings(max_examples=40, deadline=None)
@given(ids=edge_ids.filter(lambda ids: 1 <= len(ids) <= 40), keys=stream_keys, data=st.data())
def test_edge_choice_is_deterministic(ids: list[str], keys: list[str], data: st.DataObject) -> None:
    loads = data.draw(st.lists(st.integers(0, 1000), min_size=len(ids), max_size=len(ids)))
    edges = [node(i, viewers=v) for i, v in zip(ids, loads, strict=True)]
    shuffled = data.draw(st.permutations(edges))
    for key in keys:
        first = choose_edge(key, edges, None)
        assert first is not None
        assert choose_edge(key, edges, None) == first
        assert choose_edge(key, shuffled, None) == first  # the order the registry lists nodes in is irrelevant
        # The bound holds for any loads, not only for loads this router produced.
        assert first.load.viewers + 1 <= bounded_capacity(sum(loads), len(edges), 0.25)


@settings(max_examples=30, deadline=None)
@given(ids=edge_ids.filter(lambda ids: 1 <= len(ids) <= 40), keys=stream_keys)
def test_zero_loads_map_each_stream_to_its_home(ids: list[str], keys: list[str]) -> None:
    edges = [node(i) for i in ids]
    ring = Ring(ids)
    for key in keys:
        chosen = choose_edge(key, edges, None)
        assert chosen is not None and chosen.id == ring.home(key)


# Statistical limits per epsilon, with margin over the worst seen in many runs: (mean edges per stream,
# most edges of any stream, least share of viewers on each stream's busiest edge). A smaller epsilon
# balances tighter and so spills more.
CONCENTRATION = {0.1: (6.5, 15, 0.4), 0.25: (4.0, 10, 0.5), 0.5: (3.2, 8, 0.6)}


# derandomize: statistical thresholds must not make the suite flaky; the examples are fixed but many.
@settings(max_examples=12, deadline=None, derandomize=True)
@given(n=st.integers(5, 40), epsilon=st.sampled_from(sorted(CONCENTRATION)), seed=st.integers(0, 2**32 - 1))
def test_bounded_loads_and_concentration(n: int, epsilon: float, seed: int) -> None:
    """2000 viewers arrive one by one on 50 streams: no edge ever passes the bound, and each stream's
    viewers stay on a few edges (a random or round-robin spread would use nearly all of them)."""
    mean_edges, most_edges, top_share = CONCENTRATION[epsilon]
    rnd = random.Random(seed)
    nodes = {f"edge-{seed}-{i}": node(f"edge-{seed}-{i}") for i in range(n)}
    streams = [f"live/s{rnd.randrange(10**9)}-{i}" for i in range(50)]
    placed: dict[str, Counter[str]] = {s: Counter() for s in streams}
    total = 0
    for _ in range(2000):
        stream = rnd.choice(streams)
        chosen = choose_edge(stream, list(nodes.values()), None, epsilon=epsilon)
        assert chosen is not None
        cap = math.ceil((1 + epsilon) * (total + 1) / n)
        assert chosen.load.viewers + 1 <= cap
        with_load(nodes, chosen.id, +1)
        total += 1
        placed[stream][chosen.id] += 1
        assert max(x.load.viewers for x in nodes.values()) <= cap
    spread = [len(c) for c in placed.values() if c]
    assert sum(spread) / len(spread) <= mean_edges
    assert max(spread) <= most_edges
    on_top_edge = sum(c.most_common(1)[0][1] for c in placed.values() if c)
    assert on_top_edge >= top_share * total


def test_concentration_with_few_edges() -> None:
    """With as many streams per edge as a region usually has, most streams use at most 3 edges."""
    rnd = random.Random(7)
    nodes = {n.id: n for n in edges_of(8)}
    streams = [f"live/s{i}" for i in range(50)]
    used: dict[str, set[str]] = {s: set() for s in streams}
    for _ in range(2000):
        stream = rnd.choice(streams)
        chosen = choose_edge(stream, list(nodes.values()), None)
        assert chosen is not None
        with_load(nodes, chosen.id, +1)
        used[stream].add(chosen.id)
    assert sum(len(u) <= 3 for u in used.values()) >= 0.9 * len(streams)


def test_viewers_leaving_do_not_break_the_bound() -> None:
    rnd = random.Random(3)
    nodes = {n.id: n for n in edges_of(10)}
    streams = [f"live/s{i}" for i in range(20)]
    where: list[str] = []
    for step in range(3000):
        if where and rnd.random() < 0.4:
            with_load(nodes, where.pop(rnd.randrange(len(where))), -1)
            continue
        chosen = choose_edge(rnd.choice(streams), list(nodes.values()), None)
        assert chosen is not None, step
        assert chosen.load.viewers + 1 <= bounded_capacity(len(where), 10, 0.25)
        with_load(nodes, chosen.id, +1)
        where.append(chosen.id)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(n=st.integers(5, 40), seed=st.integers(0, 2**32 - 1))
def test_adding_or_removing_an_edge_moves_few_streams(n: int, seed: int) -> None:
    rnd = random.Random(seed)
    ids = [f"edge-{rnd.randrange(10**9)}-{i}" for i in range(n)]
    edges = [node(i) for i in ids]
    keys = [f"live/{rnd.randrange(10**12)}" for _ in range(600)]

    def assign(nodes: list[NodeInfo]) -> dict[str, str]:
        out = {}
        for key in keys:
            chosen = choose_edge(key, nodes, None)
            assert chosen is not None
            out[key] = chosen.id
        return out

    before = assign(edges)
    added = assign([*edges, node("edge-new")])
    moved = [k for k in keys if added[k] != before[k]]
    assert all(added[k] == "edge-new" for k in moved)  # only streams the new edge takes over move
    assert len(moved) / len(keys) < 2.5 / n

    gone = rnd.choice(ids)
    removed = assign([e for e in edges if e.id != gone])
    moved = [k for k in keys if removed[k] != before[k]]
    assert all(before[k] == gone for k in moved)  # only the streams of the removed edge move
    assert len(moved) / len(keys) < 2.5 / n
