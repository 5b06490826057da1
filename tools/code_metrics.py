"""Structural figures of the package, for before/after comparisons of refactors (issue 13).

    python tools/code_metrics.py            # src/mtlkit

Prints: the largest modules and longest functions (lines), getattr/hasattr calls, function-local
imports, imports of another module's ``_private`` names, and the ``# noqa`` / ``# type: ignore`` counts.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def main(root: Path) -> None:
    files = sorted(root.rglob("*.py"))
    sizes, functions = [], []
    probes = local_imports = private_imports = noqa = ignores = 0
    for path in files:
        text = path.read_text()
        name = str(path.relative_to(root.parent))
        sizes.append((len(text.splitlines()), name))
        noqa += text.count("# noqa")
        ignores += text.count("# type: ignore")
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((node.end_lineno - node.lineno + 1, f"{name}:{node.lineno} {node.name}"))
                local_imports += sum(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(node))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr"):
                probes += 1
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mtlkit"):
                private_imports += sum(a.name.startswith("_") and not a.name.startswith("__") for a in node.names)
    print(f"modules: {len(files)}, lines: {sum(s for s, _ in sizes)}")
    print("largest modules: " + ", ".join(f"{n} ({s})" for s, n in sorted(sizes, reverse=True)[:5]))
    print("longest functions: " + ", ".join(f"{n} ({s})" for s, n in sorted(functions, reverse=True)[:5]))
    print(f"getattr/hasattr calls: {probes}")
    print(f"function-local imports: {local_imports}")
    print(f"imports of _private names across modules: {private_imports}")
    print(f"# noqa: {noqa}, # type: ignore: {ignores}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "src" / "mtlkit")
