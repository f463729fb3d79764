"""What `pip install` ships: one top-level package, `oat`, with the repository's models/,
frontier/ and configs/ (the presets) inside it, and imports that run one way (λ and conditioning ← models ← training and
evaluation ← comparison ← CLI)."""

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_a_wheel_installs_only_oat_and_runs_from_anywhere_with_its_presets(tmp_path):
    import shutil

    source, wheels, target = tmp_path / "source", tmp_path / "wheels", tmp_path / "site"  # a copy: the build
    source.mkdir()                                                                       # leaves nothing here
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("oat", "models", "frontier", "configs"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--quiet"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(wheels), str(source)],
                   check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = wheels.glob("oat-*.whl")
    subprocess.run(pip + ["install", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)
    top = sorted(p.name for p in target.iterdir() if p.name != "bin")
    assert [name for name in top if not name.endswith(".dist-info")] == ["oat"]
    assert (target / "oat" / "models" / "registry.py").is_file() and (target / "oat" / "frontier" / "pareto.py").is_file()
    shipped = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    assert sorted(p.name for p in (target / "oat" / "configs").glob("*.yaml")) == shipped
    # From another directory, with only the installed copy on the path: oat.models and oat.frontier
    # import, the generic names do not exist, and every shipped preset is listed and loads.
    code = ("import oat.models, oat.frontier.pareto, importlib.util as u; "
            "from oat.frontier.comparison import bench_config, bench_presets, load_comparison; "
            "assert oat.models.__file__.startswith(%r); "
            "assert 'small_cnn' in oat.models.names(); "
            "assert u.find_spec('models') is None and u.find_spec('frontier') is None; "
            "presets = bench_presets(); "
            "assert presets == %r, presets; "
            "[load_comparison(bench_config(*p.rsplit('_', 1))) for p in presets]; "
            "assert str(bench_config('tsipras', 'cpu')).startswith(%r); print('ok')") % (
        str(target), sorted(n[len("bench_"):-len(".yaml")] for n in shipped if n.startswith("bench_")), str(target))
    # -S: no site module, so the editable install's finder (a .pth file) is not loaded; torch and
    # the other dependencies come from this interpreter's site-packages, put on the path by hand.
    path = [str(target)] + [p for p in sys.path if p.endswith("site-packages")]
    result = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path[:0] = {path!r}; {code}"],
                            cwd=tmp_path, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def _imports(path: Path) -> set[str]:
    """The absolute module names a source file imports (relative imports resolved in its package)."""
    folder = path.parent.relative_to(ROOT).parts  # ("oat", "attacks"), ("models",), ("frontier",)
    package = ".".join(("oat",) + folder[1:]) if folder[0] == "oat" else f"oat.{folder[0]}"
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_imports_run_one_way():
    assert {"oat.models", "oat.conditioning.Conditioning"} <= _imports(ROOT / "oat" / "runs.py") | _imports(
        ROOT / "oat" / "network.py")  # the parser sees absolute and relative imports
    core = [p for p in (ROOT / "oat").rglob("*.py") if p.name not in ("cli.py", "__main__.py")]
    for path in core:
        assert not any(n.startswith("oat.frontier") for n in _imports(path)), f"{path} imports the comparison layer"
    upward = ("oat.trainer", "oat.evaluation", "oat.runs", "oat.cli", "oat.frontier", "oat.objectives")
    for path in (ROOT / "models").rglob("*.py"):
        assert not any(n.startswith(upward) for n in _imports(path)), f"{path} imports a layer above the models"
    for path in (ROOT / "frontier").rglob("*.py"):
        assert "oat.cli" not in _imports(path), f"{path} imports the CLI"


def test_only_the_run_directory_module_names_a_runs_files():
    from oat.runs import RUN_FILES

    for path in [*(ROOT / "oat").rglob("*.py"), *(ROOT / "frontier").rglob("*.py"), *(ROOT / "models").rglob("*.py")]:
        if path == ROOT / "oat" / "runs.py":
            continue
        text = path.read_text()
        for name in RUN_FILES:
            assert f'"{name}"' not in text and f"'{name}'" not in text, f"{path} names {name}; use oat.runs"


# Where a config may be read: the schema, the builder, the CLI, the evaluation protocol built from
# an eval section, the run directory's reader (a saved config), and the comparison commands, which
# make one config per model they train. Everywhere else gets parts.
CONFIG_READERS = {"oat/config.py", "oat/experiment.py", "oat/cli.py", "oat/protocol.py", "oat/runs.py",
                  "frontier/comparison.py", "frontier/sweep.py", "frontier/tasks.py", "frontier/demo.py"}
HARMLESS = {"oat.config", "oat.config.ConfigError", "oat.config.read_yaml_mapping"}  # an error class, a YAML reader


def test_only_the_edge_touches_the_config_and_the_loop_gets_parts():
    readers = {"oat/config.py"}  # the schema itself
    for path in [*(ROOT / "oat").rglob("*.py"), *(ROOT / "frontier").rglob("*.py"), *(ROOT / "models").rglob("*.py")]:
        names = {n for n in _imports(path) if n.startswith("oat.config")} - HARMLESS
        if names:
            readers.add(str(path.relative_to(ROOT)))
    assert readers == CONFIG_READERS
    names = {node.id for node in ast.walk(ast.parse((ROOT / "oat" / "trainer.py").read_text()))
             if isinstance(node, ast.Name)}
    assert not names & {"config", "cfg", "Config"}, "the training loop holds a config"


def test_no_import_circles_and_the_schema_imports_nothing_of_oat():
    graph = {}
    for path in (ROOT / "oat").rglob("*.py"):
        module = ".".join(("oat",) + path.relative_to(ROOT / "oat").with_suffix("").parts).removesuffix(".__init__")
        graph[module] = {n for n in _imports(path) if n.startswith("oat")}
    modules = set(graph)
    edges = {m: {target for name in names for target in modules if name == target or name.startswith(target + ".")
                 if target != m and not m.startswith(target + ".") and target != "oat"} for m, names in graph.items()}
    assert not {n for n in graph["oat.config"] if n.startswith("oat.") and n != "oat.config"}

    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in edges.get(node, ()):
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    # Imports inside functions (deferred) count too: a circle is a circle however it is hidden.
    circles = [c for c in map(cycle_from, sorted(edges)) if c]
    assert not circles, circles[:3]
