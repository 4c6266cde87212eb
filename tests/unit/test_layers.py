"""The package layers hold: every module imports only the layers below it, and only launcher/
imports Ray. Read with `ast` (function-local imports count too); docs/architecture.md explains
the layers."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import ROOT

SRC = ROOT / "src"
PACKAGE = SRC / "streamloco"
RAY_ALLOWED = PACKAGE / "launcher"

BASE = frozenset({"atomic", "progress", "text", "metrics", "records"})
EVERYTHING = BASE | {"outer_optim", "config", "tokenizer", "data_pipeline", "workers", "hf"}
EVERYTHING |= {"results", "simulate", "launcher", "bench", "cli", "__main__"}

# The rules. Layer (first name under streamloco) -> what it may import besides itself.
MAY_IMPORT: dict[str, frozenset[str]] = {
    "__init__": frozenset(),  # streamloco/__init__.py: every import runs it, it stays empty
    **dict.fromkeys(BASE, BASE),
    "outer_optim": BASE,
    "config": BASE | {"outer_optim"},
    "tokenizer": BASE | {"config"},
    "data_pipeline": BASE | {"config", "tokenizer"},
    "workers": BASE | {"config", "outer_optim", "tokenizer", "data_pipeline"},
    "hf": BASE | {"config", "tokenizer", "workers"},
    "results": BASE | {"config", "outer_optim", "workers", "data_pipeline"},
    "simulate": BASE | {"config", "outer_optim", "workers", "data_pipeline", "results", "hf"},
    "launcher": EVERYTHING - {"bench", "cli", "__main__"},
    "bench": EVERYTHING - {"cli", "__main__"},
    "cli": EVERYTHING,
    "__main__": EVERYTHING,
}


def _layer(module: str) -> str:
    """'streamloco.data_pipeline.tokenize' -> 'data_pipeline'; the package root -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, at any depth."""
    source = path.read_text(encoding="utf-8")
    return _imports_in(source, _module_name(path), path.name == "__init__.py", str(path))


def _imports_in(source: str, module: str, is_package: bool, filename: str) -> list[tuple[int, str]]:
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                parts = package.split(".")
                anchor = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from streamloco import config` imports the layer `config`
            names = [f"{base}.{a.name}" for a in node.names] if base == "streamloco" else [base]
            found += [(node.lineno, name) for name in names]
    return found


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


def _check(found: list[tuple[str, str, str]], rule: str) -> None:
    lines = [f"{where}: {own} imports {target}" for own, target, where in found]
    assert not lines, f"{rule} (docs/architecture.md):\n" + "\n".join(lines)


def test_ray_is_imported_only_under_launcher() -> None:
    found = [
        (_layer(_module_name(path)), "ray", _where(path, line))
        for path in _modules()
        if RAY_ALLOWED not in path.parents
        for line, name in _imports(path)
        if name == "ray" or name.startswith("ray.")
    ]
    _check(found, "Ray is imported only under launcher/")


def test_every_module_imports_only_the_layers_below_it() -> None:
    found = []
    for path in _modules():
        own = _layer(_module_name(path))
        assert own in MAY_IMPORT, f"{path.relative_to(ROOT)}: layer {own!r} is not in the table"
        for line, name in _imports(path):
            target = _layer(name)
            if name.startswith("streamloco.") and target not in {own, *MAY_IMPORT[own]}:
                found.append((own, target, _where(path, line)))
    _check(found, "a layer imports one it may not")


def test_the_scan_sees_local_relative_and_package_imports() -> None:
    # The rules are only as good as the parser: check it on the forms the code uses.
    code = (
        "import os\n"
        "def f():\n"
        "    import ray.util\n"
        "    from . import executor\n"
        "    from ..tokenizer.model import Tokenizer\n"
        "    from streamloco import cli\n"
    )
    found = _imports_in(code, "streamloco.data_pipeline.probe", False, "probe.py")
    assert found == [
        (1, "os"),
        (3, "ray.util"),
        (4, "streamloco.data_pipeline"),
        (5, "streamloco.tokenizer.model"),
        (6, "streamloco.cli"),
    ]
    assert [_layer(name) for _, name in found[2:]] == ["data_pipeline", "tokenizer", "cli"]
