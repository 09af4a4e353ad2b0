"""The benchmarks are run as scripts (`.venv/bin/python bench/NAME.py`, as the README says). Python then puts
bench/ on the path, not the repository root, so a script that uses the test helpers must add the root first.
Checked on the source: running the scripts would import torch four times for a path question."""

from __future__ import annotations

import ast

import pytest

from tests.helpers.paths import REPO_ROOT

BENCH_SCRIPTS = sorted((REPO_ROOT / "bench").glob("*.py"))


def inserts_the_repository_root(node: ast.stmt) -> bool:
    """`sys.path.insert(0, ...)` as a statement of its own."""
    call = node.value if isinstance(node, ast.Expr) else None
    return (isinstance(call, ast.Call) and ast.unparse(call.func) == "sys.path.insert"
            and ast.unparse(call.args[0]) == "0")


def imports_test_helpers(node: ast.stmt) -> bool:
    return isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tests"


@pytest.mark.parametrize("script", BENCH_SCRIPTS, ids=lambda path: path.name)
def test_a_bench_script_that_uses_the_test_helpers_puts_the_repository_root_on_the_path_first(script):
    statements = ast.parse(script.read_text()).body
    helper_imports = [n for n, node in enumerate(statements) if imports_test_helpers(node)]
    if not helper_imports:
        return
    path_inserts = [n for n, node in enumerate(statements) if inserts_the_repository_root(node)]
    assert path_inserts and path_inserts[0] < helper_imports[0], (
        f"{script.name} imports tests.helpers without `sys.path.insert(0, str(ROOT))` before it")
