"""python-hcl2's output as plain data: its string values keep their quotes and its dicts
carry bookkeeping keys (`__start_line__`...); the tests compare against plain values.
(tests/ is on sys.path: pytest puts a rootless conftest.py's folder there.)"""

from __future__ import annotations

import hcl2


def plain(node):
    if isinstance(node, dict):
        return {k.strip('"'): plain(v) for k, v in node.items() if not k.startswith("__")}
    if isinstance(node, list):
        return [plain(v) for v in node]
    if isinstance(node, str) and len(node) >= 2 and node[0] == node[-1] == '"':
        return node[1:-1]
    return node


def load_hcl(text: str) -> dict:
    return plain(hcl2.loads(text))
