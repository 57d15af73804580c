"""The layering of ARCHITECTURE.md as a contract: every clnet module imports only modules of its own
room or of rooms below it, and the imports have no circle. Read from the sources (every import
statement, at module level or inside functions), so nothing is imported to check it."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "clnet"

# Rooms from the top down, as ARCHITECTURE.md draws them; a module belongs to the first room one
# of whose names is the module or a package above it.
ROOMS = [
    ("commands", ["clnet.cli", "clnet.cli_options", "clnet.bench", "clnet.tune"]),
    ("the public face and presets", ["clnet.__init__", "clnet.models"]),
    ("model", ["clnet.model"]),
    ("trainer", ["clnet.trainer"]),
    ("callbacks", ["clnet.callbacks"]),
    ("files and export", ["clnet.io", "clnet.export"]),
    ("runner", ["clnet.runner"]),
    ("compiler", ["clnet.compiler"]),
    ("parameters", ["clnet.params"]),
    ("network", ["clnet.network"]),
    ("losses and optimizers", ["clnet.losses", "clnet.optim"]),
    ("layers", ["clnet.layers"]),
    ("ops", ["clnet.ops"]),
    ("plan and tuning", ["clnet.plan", "clnet.tuning"]),
    ("datasets and the feed", ["clnet.datasets"]),
    ("kernels and tensors", ["clnet.kernels", "clnet.tensor"]),
    ("device", ["clnet.device"]),
    ("leaves", ["clnet.errors", "clnet.files", "clnet.text", "clnet.progress", "clnet.timing",
                "clnet.metrics", "clnet.version"]),
]


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def room(module):
    """The index of the module's room (0 = top)."""
    for index, (_, names) in enumerate(ROOMS):
        if any(module == name or module.startswith(name + ".") for name in names):
            return index
    raise AssertionError(f"{module} belongs to no room: add it to ROOMS and to ARCHITECTURE.md")


def resolve(name):
    """A dotted name as the module it loads: a module file, else a package's __init__."""
    if name in MODULES:
        return name
    if f"{name}.__init__" in MODULES:
        return f"{name}.__init__"
    return None


def imports(module):
    """The clnet modules `module` imports."""
    path = MODULES[module]
    package = module.rsplit(".", 1)[0]  # a package's __init__ and its modules resolve from the package
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(filter(None, (resolve(alias.name) for alias in node.names)))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from . import io` names a module; `from .x import f` does not
                found.add(resolve(f"{base}.{alias.name}") or resolve(base))
    found.discard(None)
    found.discard(module)
    return found


GRAPH = {module: imports(module) for module in MODULES}


def test_every_module_has_a_room():
    for module in MODULES:
        room(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_upward_import(module):
    upward = sorted(m for m in GRAPH[module] if room(m) < room(module))
    assert not upward, (f"{module} ({ROOMS[room(module)][0]}) imports {upward} from a room above it: "
                        "move the code down, or pass what it needs as an argument")


def test_no_circle():
    """Depth-first search for a cycle; a package's __init__ may import its own modules."""
    state = {}

    def visit(module, path):
        state[module] = "open"
        for target in sorted(GRAPH[module]):
            if state.get(target) == "open":
                circle = path[path.index(target):] + [target]
                raise AssertionError("import circle: " + " -> ".join(circle))
            if target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


def test_the_contract_can_fail():
    """The checks see what they must: a known upward import and a known circle are caught."""
    assert "clnet.network" in GRAPH["clnet.compiler"] and room("clnet.network") > room("clnet.compiler")
    GRAPH["clnet.device"].add("clnet.model")
    try:
        with pytest.raises(AssertionError, match="clnet.device"):
            test_no_upward_import("clnet.device")
        with pytest.raises(AssertionError, match="import circle"):
            test_no_circle()
    finally:
        GRAPH["clnet.device"].discard("clnet.model")
