"""Cut OpenAI's published OpenAPI description down to the operations ricardo serves, with every component they
reference, so the conformance test (tests/integration/test_conformance.py) needs no copy of the whole 3.4 MB file.

    python scripts/openapi_subset.py ../shared/data/openai-openapi/openapi.json tests/data/openai-openapi/openapi.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OPERATIONS = {"/chat/completions": ["post"], "/completions": ["post"], "/models": ["get"], "/embeddings": ["post"]}


def refs(node: Any) -> set[str]:
    """The `#/components/...` references anywhere in `node`."""
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(refs(v) for v in node))
    return set()


def subset(spec: dict[str, Any]) -> dict[str, Any]:
    paths = {
        path: {method: _without_docs(spec["paths"][path][method]) for method in methods}
        for path, methods in OPERATIONS.items()
    }
    wanted: set[str] = set()
    todo = refs(paths)
    while todo:
        ref = todo.pop()
        if ref in wanted:
            continue
        wanted.add(ref)
        _, _, kind, name = ref.split("/", 3)
        todo |= refs(spec["components"][kind][name])
    components: dict[str, dict[str, Any]] = {"securitySchemes": spec["components"]["securitySchemes"]}
    for ref in sorted(wanted):
        _, _, kind, name = ref.split("/", 3)
        components.setdefault(kind, {})[name] = spec["components"][kind][name]
    head = {k: spec[k] for k in ("openapi", "info", "servers", "security")}
    return {**head, "paths": paths, "components": components}


def _without_docs(operation: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in operation.items() if k != "x-oaiMeta"}  # code samples in many languages


if __name__ == "__main__":
    source, target = sys.argv[1:3]
    cut = subset(json.loads(Path(source).read_text()))
    Path(target).write_text(json.dumps(cut, indent=1, sort_keys=True) + "\n")
    print(f"{target}: {len(cut['paths'])} paths, {sum(len(v) for v in cut['components'].values())} components")
