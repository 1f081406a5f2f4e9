"""Longest functions and modules in the packages the style rule covers (functions <= 60 lines,
modules <= 400 lines in glasses/ service/ training/ loadtests/).

    python scripts/code_size.py [--root DIR] [--top N]      exit 1 when a limit is exceeded
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGES = ("glasses", "service", "training", "loadtests")
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400


def function_lengths(path: Path) -> list[tuple[int, str]]:
    """(lines, "file:line name") of every function and method, decorators included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            out.append((node.end_lineno - start + 1, f"{path}:{node.lineno} {node.name}"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args(argv)
    files = sorted(f for p in PACKAGES for f in (args.root / p).rglob("*.py"))
    modules = sorted(((len(f.read_text().splitlines()), str(f.relative_to(args.root))) for f in files), reverse=True)
    functions = sorted((n, name.replace(f"{args.root}/", "")) for f in files for n, name in function_lengths(f))[::-1]
    print(f"modules: {len(modules)}, longest:")
    for n, name in modules[:args.top]:
        print(f"  {n:5d}  {name}")
    print(f"functions: {len(functions)}, longest:")
    for n, name in functions[:args.top]:
        print(f"  {n:5d}  {name}")
    over = [m for m in modules if m[0] > MAX_MODULE_LINES] + [f for f in functions if f[0] > MAX_FUNCTION_LINES]
    print(f"over the limits (module > {MAX_MODULE_LINES}, function > {MAX_FUNCTION_LINES} lines): {len(over)}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
