"""Every Python block of README.md and docs/*.md runs; the public API is documented (Args/Returns/Raises)
and no module imports another's private names."""

import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [(p, i, code) for p in DOCS for i, code in enumerate(re.findall(r"```python\n(.*?)```", p.read_text(), re.S))]


@pytest.mark.parametrize("path,index,code", BLOCKS, ids=[f"{p.name}#{i}" for p, i, _ in BLOCKS])
def test_python_blocks_in_the_docs_run(path, index, code, tmp_path):
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{path.name} block {index} failed:\n{r.stderr[-3000:]}"


def _audit():
    spec = importlib.util.spec_from_file_location("api_audit", ROOT / "tools" / "api_audit.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_public_functions_have_args_returns_raises():
    findings = _audit().docstring_findings()
    assert not findings, "\n".join(findings)


def test_no_private_names_imported_across_modules():
    found = _audit().private_imports(ROOT / "ntk_ode")
    assert not found, "\n".join(found)
