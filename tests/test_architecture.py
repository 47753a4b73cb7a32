"""The layering rules of docs/ARCHITECTURE.md, checked on the source: who may import whom,
file and function sizes. Imports inside functions count (a lazy import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hvlm_export"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80

#: layer (first path component under hvlm_export) -> layers it must never import
FORBIDDEN = {
    "errors": {"*"},
    "artifacts": {"modules", "ops", "exporters", "validators", "runtime", "plugins", "registry", "cli", "bench",
                  "bench_report"},
    "modules": {"exporters", "validators", "runtime", "plugins", "registry", "cli", "bench", "artifacts"},
    "ops": {"modules", "exporters", "validators", "runtime", "plugins", "registry", "cli", "bench"},
    "plugins": {"modules", "exporters", "validators", "runtime", "registry", "cli", "bench"},
    "user_models": {"modules", "ops", "exporters", "validators", "runtime", "plugins", "registry", "cli", "bench",
                    "artifacts"},
    "tolerances": {"*"},
    "kernels": {"*"},
    "registry": {"exporters", "validators", "runtime", "plugins", "cli", "bench"},
    "exporters": {"validators", "runtime", "cli", "bench"},
    "runtime": {"exporters", "validators", "cli", "bench", "modules", "registry"},
    "validators": {"cli", "bench"},
    "serving": {"modules", "ops", "exporters", "validators", "plugins", "registry", "cli", "bench"},
}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "hvlm_export" or len(parts) == 1:
        return None
    return parts[1]


def _sources():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(tree: ast.AST, path: Path) -> list[tuple[int, str]]:
    package = ".".join(("hvlm_export", *path.relative_to(PACKAGE).with_suffix("").parts[:-1]))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found += [(node.lineno, f"{base}.{a.name}" if base == "hvlm_export" else base) for a in node.names]
    return found


def violations(path: Path) -> list[str]:
    """Every rule broken by one source file, as readable messages."""
    text = path.read_text()
    tree = ast.parse(text)
    rel = path.relative_to(PACKAGE)
    own = rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 else rel.stem
    out = []
    lines = len(text.splitlines())
    if lines > MAX_FILE_LINES:
        out.append(f"{rel}: {lines} lines (max {MAX_FILE_LINES})")
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                out.append(f"{rel}:{node.lineno}: function {node.name} has {length} lines (max {MAX_FUNCTION_LINES})")
    banned = FORBIDDEN.get(own, set())
    for lineno, name in _imports(tree, path):
        layer = _layer(name)
        if layer is not None and layer != own and ("*" in banned or layer in banned):
            out.append(f"{rel}:{lineno}: layer '{own}' imports {name} (layer '{layer}' is above it)")
    return out


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_layering_and_sizes(path):
    problems = violations(path)
    assert not problems, "\n".join(problems)


def test_the_check_catches_a_planted_violation(tmp_path):
    """A test that cannot fail is a defect: plant each kind of violation and see it reported."""
    fake = tmp_path / "hvlm_export"
    (fake / "runtime").mkdir(parents=True)
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES + 1))
    src = "from hvlm_export.exporters.onnx_export import export_onnx\n\ndef big():\n" + body + "\n"
    (fake / "runtime" / "bad.py").write_text(src + "\n" * MAX_FILE_LINES)
    global PACKAGE
    saved, PACKAGE = PACKAGE, fake
    try:
        problems = violations(fake / "runtime" / "bad.py")
    finally:
        PACKAGE = saved
    text = "\n".join(problems)
    assert "layer 'runtime' imports hvlm_export.exporters.onnx_export" in text
    assert "function big has" in text and "lines (max 400)" in text
