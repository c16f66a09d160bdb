"""Audit the public API: docstrings with Args/Returns/Raises, and private names imported across modules.

    python tools/api_audit.py [PACKAGE_ROOT]     # prints the counts and every finding

A public function is a name in a module's ``__all__`` (functions, and the public methods of
classes listed there). Its docstring must have an ``Args:`` section when it takes parameters, a
``Returns:`` section unless it returns None, and a ``Raises:`` section when its body raises.
tests/test_api_docs.py keeps both counts at zero.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import sys
import textwrap
from pathlib import Path


def public_callables(package: str = "ntk_ode"):
    """(qualified name, function) for every public function and public method of the package."""
    pkg = importlib.import_module(package)
    seen = set()
    for info in pkgutil.walk_packages(pkg.__path__, package + "."):
        mod = importlib.import_module(info.name)
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name, None)
            if inspect.isclass(obj) and obj.__module__ == mod.__name__:
                for m, fn in vars(obj).items():
                    fn = fn.__func__ if isinstance(fn, (staticmethod, classmethod)) else fn
                    if (
                        not m.startswith("_")
                        and inspect.isfunction(fn)
                        and fn.__name__ != "<lambda>"
                        and id(fn) not in seen
                    ):
                        seen.add(id(fn))
                        yield f"{mod.__name__}.{name}.{m}", fn
            elif inspect.isfunction(obj) and obj.__module__ == mod.__name__ and id(obj) not in seen:
                seen.add(id(obj))
                yield f"{mod.__name__}.{name}", obj


def _raises(fn) -> bool:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return False
    body = tree.body[0]
    nested = {
        id(n)
        for f in ast.walk(body)
        if isinstance(f, (ast.FunctionDef, ast.Lambda)) and f is not body
        for n in ast.walk(f)
    }
    return any(isinstance(n, ast.Raise) and id(n) not in nested for n in ast.walk(body))


def docstring_findings(package: str = "ntk_ode") -> list[str]:
    """Missing docstrings or sections of public functions."""
    out = []
    for qual, fn in public_callables(package):
        doc = inspect.getdoc(fn)
        if not doc:
            out.append(f"{qual}: no docstring")
            continue
        sig = inspect.signature(fn)
        params = [p for p in sig.parameters if p not in ("self", "cls")]
        if params and "Args:" not in doc:
            out.append(f"{qual}: no Args section")
        ret = sig.return_annotation
        returns_none = ret in (None, "None") or fn.__name__ == "__init__"
        if not returns_none and "Returns:" not in doc and "Yields:" not in doc:
            out.append(f"{qual}: no Returns section")
        if _raises(fn) and "Raises:" not in doc:
            out.append(f"{qual}: raises but has no Raises section")
    return out


def private_imports(root: Path) -> list[str]:
    """``from .module import _private`` across modules of the package at ``root``."""
    out = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        out.append(
                            f"{path.relative_to(root.parent)}: from {'.' * node.level}{node.module} import {alias.name}"
                        )
    return out


def main(argv: list[str]) -> int:
    root = Path(argv[1]).resolve() if len(argv) > 1 else Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    docs = docstring_findings()
    priv = private_imports(root / "ntk_ode")
    n_public = sum(1 for _ in public_callables())
    no_doc = sum(1 for f in docs if f.endswith("no docstring"))
    for f in docs + priv:
        print(f)
    print(
        f"public functions: {n_public}; without a docstring: {no_doc}; "
        f"docstring findings: {len(docs)}; private cross-module imports: {len(priv)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
