"""How the package is put together: no import cycles, the engine never imports the page, and
the client side (results, wire format, HTTP client) never loads torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "vitviz"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at module level or in a function, outside TYPE_CHECKING;
    ``from vitviz import models`` counts as importing ``vitviz.models``."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            for alias in node.names:  # `from vitviz.inputs import geometry` imports a module
                if f"{node.module}.{alias.name}" in MODULES:
                    found.add(f"{node.module}.{alias.name}")
    return found


# a package importing its own submodules (`from vitviz.ui.views import heads`) is no cycle
GRAPH = {
    name: {m for m in imports_of(path) if m in MODULES and m != name}
    for name, path in MODULES.items()
}


def test_the_import_graph_has_no_cycles():
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycle = [*trail[trail.index(nxt) :], nxt] if nxt in trail else [node, nxt]
                pytest.fail("import cycle: " + " → ".join(cycle))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert len(GRAPH) > 30  # the walk saw the package


def test_the_engine_never_imports_the_page():
    for name, path in MODULES.items():
        if name.startswith("vitviz.ui"):
            continue
        found = imports_of(path)
        assert not any(m.startswith("vitviz.ui") for m in found), (name, found)
        assert not any(m.split(".")[0] == "streamlit" for m in found), (name, found)


def test_methods_and_render_import_no_model_or_http_code():
    for name, path in MODULES.items():
        if name.startswith(("vitviz.methods", "vitviz.output.render")):
            found = imports_of(path)
            for banned in (
                "timm",
                "requests",
                "fastapi",
                "ray",
                "vitviz.models",
                "vitviz.backends",
            ):
                assert not any(m == banned or m.startswith(banned + ".") for m in found), (
                    name,
                    banned,
                )


def test_the_client_side_loads_no_torch():
    code = (
        "import sys\n"
        "import vitviz\n"
        "from vitviz import results, wire\n"
        "from vitviz.inputs import geometry\n"
        "from vitviz.backends import Backend\n"
        "from vitviz.backends.remote import RemoteBackend\n"
        "from vitviz.results import ModelInfo, ClassRelevance\n"
        "from vitviz.ui import servers, downloads\n"
        "heavy = sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
    # and the engine does load it (the check can fail)
    engine = code.replace("from vitviz.ui import servers, downloads", "import vitviz.methods")
    done = subprocess.run(
        [sys.executable, "-c", engine], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert "torch" in done.stdout


# What the page and the CLI must never import, anywhere in a module (module level or inside a
# function): they reach models only through the vitviz.backends protocol, and
# vitviz.backends.local_backend makes an in-process backend (importing the engine itself).
MODEL_CODE = (
    "torch",
    "torchvision",
    "timm",
    "vitviz.models",  # the package (it re-exports load_model) and every submodule but:
    "vitviz.backends.local",
    "vitviz.engine.capture",
    "vitviz.engine.gradients",
    "vitviz.engine.embeddings",
    "vitviz.analysis.trust",
)
MODEL_DATA = ("vitviz.models.registry",)  # the curated models and families: data, allowed
# (module, banned import) pairs left, each with its reason; none may be added without one
MODEL_CODE_EXCEPTIONS = {
    ("vitviz.ui.resources", "vitviz.models"): "the page's model cache: a model's parameter "
    "count before its load (memory admission), the weights download with its progress bar, "
    "the default model's weights check; the backend itself comes from local_backend",
    ("vitviz.ui.sidebar", "vitviz.models"): "the curated list and a typed name's family flags "
    "(typed labels, weights file, local folder): the family registry imports the families",
    ("vitviz.cli.common", "vitviz.models"): "--labels/--template are checked against the "
    "name's family (typed labels) before any model work",
    ("vitviz.cli.compare", "vitviz.models"): "model B's typed labels are checked against its "
    "family (typed labels) before any model work",
    ("vitviz.cli.models", "vitviz.models"): "`vitviz models` lists the curated models and "
    "their weights plans (registry and hub data, no loading)",
    ("vitviz.cli.serve", "vitviz.models"): "`vitviz serve` checks the model name and weights "
    "file (and a CLIP model's config) before it starts the server that loads them",
}


def banned_in(module: str) -> str | None:
    """The entry of :data:`MODEL_CODE` that ``module`` falls under (None: allowed)."""
    if module in MODEL_DATA:
        return None
    for banned in MODEL_CODE:
        if module == banned or module.startswith(banned + "."):
            return banned
    return None


def test_the_page_and_the_cli_import_no_model_code():
    """vitviz.ui and vitviz.cli never import torch, timm, model loading or the engine's
    capture, gradient and embedding code: they go through the Backend protocol."""
    bad, used = [], set()
    for name, path in MODULES.items():
        if not name.startswith(("vitviz.ui", "vitviz.cli")):
            continue
        for module in imports_of(path):
            banned = banned_in(module)
            if banned is None:
                continue
            if (name, banned) in MODEL_CODE_EXCEPTIONS:
                used.add((name, banned))
            else:
                bad.append(f"{name} imports {module}")
    assert not bad, "model code in the page or the CLI:\n" + "\n".join(sorted(bad))
    stale = set(MODEL_CODE_EXCEPTIONS) - used
    assert not stale, f"exceptions no longer needed (remove them): {sorted(stale)}"


def test_the_model_code_check_sees_what_it_bans(tmp_path):
    """The walk finds imports inside functions and ``from vitviz import models`` (the check
    can fail)."""
    path = tmp_path / "page.py"
    path.write_text(
        "from vitviz import models\n"
        "from vitviz.models.registry import CURATED\n"
        "def f():\n    import torch\n    from vitviz.engine.capture import prepare\n"
    )
    found = {banned_in(m) for m in imports_of(path)} - {None}
    assert found == {"vitviz.models", "torch", "vitviz.engine.capture"}
