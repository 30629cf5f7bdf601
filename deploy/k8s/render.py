"""Render a kustomization to plain manifests, for machines without kubectl (CI validates the output).

It understands exactly the subset of kustomize the files in deploy/k8s use, and refuses anything else rather
than render it wrongly: ``resources`` (files, or directories holding a kustomization.yaml), ``namespace``,
``images`` (newName/newTag) and ``patches`` given by ``path`` (strategic-merge style: maps merge, lists of
named items merge by name, other lists are replaced). ``kubectl kustomize DIR`` gives the same output.

    python deploy/k8s/render.py deploy/k8s/overlays/example > livecdn.yaml
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

SUPPORTED = {"apiVersion", "kind", "namespace", "resources", "images", "patches"}
CLUSTER_SCOPED = {"Namespace"}


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(i, dict) and "name" in i for i in base + patch)
    ):
        by_name = {item["name"]: item for item in base}
        out = [_merge(by_name[item["name"]], item) if item["name"] in by_name else item for item in patch]
        patched = {item["name"] for item in patch}
        return [item for item in base if item["name"] not in patched] + out
    return copy.deepcopy(patch)


def _identity(doc: dict[str, Any]) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def render(directory: Path) -> list[dict[str, Any]]:
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - SUPPORTED
    if unknown:
        raise SystemExit(f"{directory}/kustomization.yaml: this renderer does not support {sorted(unknown)}")
    docs: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        docs += render(path) if path.is_dir() else _documents(path)
    for patch in spec.get("patches", []):
        if set(patch) != {"path"}:
            raise SystemExit(f"{directory}: only patches given by path are supported, got {patch}")
        for change in _documents(directory / patch["path"]):
            matches = [i for i, doc in enumerate(docs) if _identity(doc) == _identity(change)]
            if len(matches) != 1:
                raise SystemExit(f"{directory}: patch {patch['path']} matches {len(matches)} resources")
            docs[matches[0]] = _merge(docs[matches[0]], change)
    images = {image["name"]: image for image in spec.get("images", [])}
    for doc in docs:
        for container in _containers(doc):
            name, _, tag = container["image"].partition(":")
            if name in images:
                image = images[name]
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag or 'latest')}"
        if "namespace" in spec and doc["kind"] not in CLUSTER_SCOPED:
            doc["metadata"]["namespace"] = spec["namespace"]
    return docs


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    pod = doc.get("spec", {}).get("template", {}).get("spec", {})
    return list(pod.get("containers", [])) + list(pod.get("initContainers", []))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    print(yaml.safe_dump_all(render(Path(argv[1])), sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
