"""The layer rule of tlutils: core imports nothing above it, topics import only core, course anything."""

import ast
from pathlib import Path

import tlutils

PACKAGE = Path(tlutils.__file__).parent
LAYERS = ("core", "topics", "course")
ALLOWED = {"core": {"core"}, "topics": {"core", "topics"}, "course": {"core", "topics", "course"}}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "tlutils" and parts[1] in LAYERS else None


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every tlutils module a file imports, at any depth (lazy imports inside functions count too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" if node.module in ("tlutils", *(f"tlutils.{x}" for x in LAYERS))
                     else node.module for alias in node.names]
            found += [(node.lineno, name) for name in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == "tlutils"]


def test_every_module_lives_in_a_layer():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert not loose, f"modules outside core/, topics/ and course/: {loose}"
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")} <= set(LAYERS)


def test_imports_follow_the_layer_rule():
    violations = []
    for layer in LAYERS:
        for path in sorted((PACKAGE / layer).glob("*.py")):
            for line, name in _imports(path):
                target = _layer(name)
                if target is None or target not in ALLOWED[layer]:
                    violations.append(f"{path.relative_to(PACKAGE)}:{line} imports {name}")
    assert not violations, "layer rule broken (core < topics < course):\n" + "\n".join(violations)


def test_the_rule_checker_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from tlutils.course.widgets import interactive_plot\n")
    assert _imports(bad) == [(2, "tlutils.course.widgets")] and _layer("tlutils.course.widgets") == "course"


def test_topic_modules_stay_small():
    sizes = {p.name: len(p.read_text().splitlines()) for p in (PACKAGE / "topics").glob("*.py")}
    assert max(sizes.values()) <= 500, {name: n for name, n in sizes.items() if n > 500}


def test_the_package_map_lists_every_module():
    doc = tlutils.__doc__
    for layer in LAYERS:
        for path in (PACKAGE / layer).glob("*.py"):
            if path.stem != "__init__":
                assert path.stem in doc, f"tlutils/__init__.py's map lacks {layer}/{path.name}"


def test_short_import_paths_are_the_home_objects():
    from tlutils.core.train import fit

    assert tlutils.fit is fit
    for name, home in tlutils.SHORTCUTS.items():
        assert getattr(tlutils, name) is getattr(__import__(home, fromlist=[name]), name)
