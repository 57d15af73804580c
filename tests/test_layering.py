"""The layering of ARCHITECTURE.md as a contract: every clnet module imports only modules of its own
room or of rooms below it, and the imports have no circle. The rooms are read from ARCHITECTURE.md's
table, and the imports from the sources (every import statement, at module level or inside
functions, also those only for type checking), so nothing is imported to check it."""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "clnet"
ARCHITECTURE = PACKAGE.parent / "ARCHITECTURE.md"


def read_rooms():
    """The rooms of ARCHITECTURE.md's table "The rooms, from the top down", in order: (room, the
    modules and packages it holds), `cli.py` read as clnet.cli and `callbacks/` as clnet.callbacks."""
    section = ARCHITECTURE.read_text().split("## The rooms, from the top down", 1)[1].split("\n## ", 1)[0]
    rooms = []
    for row in section.splitlines():
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if not row.startswith("|") or len(cells) < 3 or cells[0] in ("room", "---"):
            continue
        files = re.findall(r"`([^`]+)`", cells[1])
        rooms.append((cells[0], ["clnet." + re.sub(r"(\.py|/)$", "", name) for name in files]))
    return rooms


# A module belongs to the first room one of whose names is the module or a package above it.
ROOMS = read_rooms()


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


def test_the_rooms_are_read_from_the_architecture_page():
    assert len(ROOMS) >= 15 and ROOMS[0][0] == "commands" and "clnet.device" in ROOMS[-2][1]
    assert all(names for _, names in ROOMS)


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


# The modules that talk to OpenCL: everything else records into plans or calls these.
OPENCL = {"clnet.device", "clnet.tensor", "clnet.kernels", "clnet.plan", "clnet.runner", "clnet.bench", "clnet.tune"}


def third_party(module):
    """The top-level packages outside clnet that `module` imports."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_the_device_rooms_talk_to_opencl(module):
    """No module-level OpenCL state and no transfers elsewhere: layers, ops, losses, the compiler
    and the rooms above them reach OpenCL only through the device, tensor, kernel, plan and runner
    modules."""
    assert "pyopencl" not in third_party(module) or module in OPENCL, f"{module} imports pyopencl"


def test_layers_allocate_nothing():
    """Layers record launches over the values the compiler hands them: they never make device
    tensors (clnet.tensor) themselves."""
    offenders = sorted(m for m in MODULES if m.startswith("clnet.layers.") and "clnet.tensor" in GRAPH[m])
    assert not offenders, f"{offenders} import clnet.tensor"


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
    assert "pyopencl" in third_party("clnet.plan") and "clnet.tensor" in GRAPH["clnet.plan"]
