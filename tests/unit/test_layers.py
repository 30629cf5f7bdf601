"""The layers stay visible: no import cycles, every import points down, the protocol core is sans-IO."""

from __future__ import annotations

from pathlib import Path

from tests.layers import asyncio_in_sans_io, find_cycles, import_graph, project_modules, unit_of, wrong_way_imports


def test_no_import_cycles() -> None:
    assert find_cycles(import_graph()) == []


def test_every_import_points_down() -> None:
    assert wrong_way_imports(import_graph()) == []


def test_every_module_has_a_layer() -> None:
    assert [m for m in project_modules() if unit_of(m) is None] == []


def test_protocol_and_media_code_has_no_asyncio() -> None:
    assert asyncio_in_sans_io() == []


def test_only_the_command_line_imports_the_roles() -> None:
    roles = {"origin", "edge", "control"}
    importers = {
        module
        for module, targets in import_graph().items()
        if any(unit_of(t) in roles and unit_of(t) != unit_of(module) for t in targets)
    }
    assert importers and all(unit_of(m) == "livecdn" for m in importers), importers


# -- the checker itself finds what it must ----------------------------------------------------------


def test_checker_finds_a_cycle_through_a_type_only_import(tmp_path: Path) -> None:
    pkg = tmp_path / "common" / "hub"
    pkg.mkdir(parents=True)
    (tmp_path / "common" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from common.hub import b\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from common.hub.a import thing\n"
    )
    graph = import_graph(tmp_path)
    assert find_cycles(graph) == [["common.hub.a", "common.hub.b"]]


def test_checker_finds_upward_and_sideways_imports(tmp_path: Path) -> None:
    for package in ("common", "common/hub", "common/registry", "common/rtmp", "origin", "edge"):
        (tmp_path / package).mkdir(parents=True, exist_ok=True)
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "common" / "rtmp" / "session.py").write_text("def f():\n    from common.hub import stream\n")
    (tmp_path / "common" / "hub" / "stream.py").write_text("from common.registry import base\n")
    (tmp_path / "common" / "registry" / "base.py").write_text("")
    (tmp_path / "origin" / "role.py").write_text("from ..edge import role\n")
    (tmp_path / "edge" / "role.py").write_text("import asyncio\n")
    problems = wrong_way_imports(import_graph(tmp_path))
    assert any(p.startswith("common.rtmp.session (common.rtmp, rank 1) imports common.hub.stream") for p in problems)
    assert any(p.startswith("common.hub.stream (common.hub, rank 3) imports common.registry.base") for p in problems)
    assert any(p.startswith("origin.role (origin, rank 6) imports edge.role") for p in problems), problems
    importers = {p.split(" (")[0] for p in problems}
    assert importers == {"common.rtmp.session", "common.hub.stream", "origin.role"}, problems  # edge.role is fine


def test_checker_finds_asyncio_in_the_protocol_core(tmp_path: Path) -> None:
    (tmp_path / "common" / "rtmp").mkdir(parents=True)
    (tmp_path / "common" / "__init__.py").write_text("")
    (tmp_path / "common" / "rtmp" / "__init__.py").write_text("")
    (tmp_path / "common" / "rtmp" / "chunk.py").write_text("from asyncio import Queue\n")
    assert asyncio_in_sans_io(tmp_path) == ["common.rtmp.chunk"]
