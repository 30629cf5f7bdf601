"""The whole server side of a connection, fuzzed with hypothesis mutations of real ffmpeg sessions (a short
run; the long one is `python -m tests.fuzzing`, figures in docs/SECURITY.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzzing import OPS, Mutation, Seed, mutate, record_sessions, run_input

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Seed]:
    return record_sessions(tmp_path_factory.mktemp("seeds"))


def test_the_recorded_sessions_get_all_the_way(seeds: dict[str, Seed]) -> None:
    # The seeds themselves, fed as they were received: a real publish and a real play, accepted.
    for name, depth in (("publish", "publishing"), ("play", "playing")):
        seed = seeds[name]
        assert asyncio.run(run_input(seed.data, seed.reads, seed.plays)) == depth


mutations = st.lists(
    st.builds(
        Mutation,
        op=st.sampled_from(OPS),
        at=st.floats(0, 1),
        size=st.integers(1, 64),
        value=st.integers(0, 255),
        other_at=st.floats(0, 1),
        past_handshake=st.booleans(),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    base=st.sampled_from(["publish", "play"]),
    other=st.sampled_from(["publish", "play"]),
    changes=mutations,
    cuts=st.lists(st.integers(1, 30_000), max_size=4),
)
def test_mutated_sessions_only_ever_close_the_connection(
    seeds: dict[str, Seed], base: str, other: str, changes: list[Mutation], cuts: list[int]
) -> None:
    seed = seeds[base]
    asyncio.run(run_input(mutate(seed.data, changes, seeds[other].data), [*seed.reads, *cuts], seed.plays))


def test_the_long_run_command_works(tmp_path: Path) -> None:
    from tests.fuzzing import main

    with pytest.raises(SystemExit) as done:
        main(["--inputs", "200", "--workers", "1", "--workdir", str(tmp_path)])
    assert done.value.code == 0
