"""The package's layout: the paper in fpn_plugin.modeling, how it is run fast in
fpn_plugin.accel; layers that import only downwards, no import circle, private names kept in
their module, nothing reached outside the package through ``__file__``."""

import ast
import inspect
import os

from detectron2.modeling.backbone.fpn import FPN

from fpn_plugin import FPNNeck
from tests.conftest import REPO

PACKAGE = os.path.join(REPO, "fpn_plugin")
#: The package's parts, lowest layer first: a module imports from its own part and from parts of
#: lower layers only. ``fpn_plugin`` itself (its ``__init__``, the public names) is the top.
LAYERS = (
    ("fpn_plugin._requirements", "fpn_plugin.config"),
    ("fpn_plugin.modeling",),
    ("fpn_plugin.accel",),
    (
        "fpn_plugin.data",
        "fpn_plugin.evaluation",
        "fpn_plugin.export",
        "fpn_plugin.utils",
        "fpn_plugin.convert",
    ),
    ("fpn_plugin.engine",),
    ("fpn_plugin",),
)


def _imports(path):
    """Every module name a Python file imports, relative imports resolved against its package."""
    package = os.path.relpath(os.path.dirname(path), REPO).replace(os.sep, ".")
    names = []
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            names += [module] + [f"{module}.{a.name}" for a in node.names]
    return names


def test_modeling_imports_nothing_from_the_acceleration_code():
    folder = os.path.join(PACKAGE, "modeling")
    files = [os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".py")]
    assert len(files) >= 8
    for path in files:
        offending = [n for n in _imports(path) if n.startswith("fpn_plugin.accel")]
        assert not offending, (path, offending)
    # The check itself sees such imports.
    assert "fpn_plugin.accel.roi_align" in _imports(
        os.path.join(PACKAGE, "accel", "multilevel_pooler.py")
    )


def test_the_neck_takes_the_architecture_only():
    ours = list(inspect.signature(FPNNeck.__init__).parameters)[1:]
    detectron2s = list(inspect.signature(FPN.__init__).parameters)[1:]
    assert ours[: len(detectron2s)] == detectron2s  # a drop-in: Detectron2's seven, in order
    assert ours[len(detectron2s) :] == [
        "upsample",
        "top_down",
        "lateral",
        "finest_only",
    ]  # the paper's variants


# --- the import graph -------------------------------------------------------------------------


def _package_sources():
    """{dotted module name: source} of every file in the package (``pkg/__init__.py`` is
    ``pkg``)."""
    sources = {}
    for folder, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                name = os.path.relpath(path, REPO)[: -len(".py")].replace(os.sep, ".")
                name = name[: -len(".__init__")] if name.endswith(".__init__") else name
                with open(path) as fh:
                    sources[name] = fh.read()
    return sources


def _import_nodes(module, source, is_package):
    """(node, imported module name, imported names) of each import of ``source``, relative
    imports resolved (``module`` is its dotted name, ``is_package`` for an ``__init__``)."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node, a.name, []
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            yield node, ".".join(p for p in (base, node.module) if p), [a.name for a in node.names]


def _resolve(name, modules):
    """The module of ``modules`` that dotted ``name`` (a module or a name in one) lies in."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(sources, packages):
    """{module: set of the modules of ``sources`` it imports} (self-imports left out);
    ``packages``: the names that are packages (``__init__`` files)."""
    graph = {}
    for module, source in sources.items():
        targets = set()
        for _, imported, names in _import_nodes(module, source, module in packages):
            for full in [imported] + [f"{imported}.{n}" for n in names]:
                target = _resolve(full, sources)
                if target and target != module:
                    targets.add(target)
        graph[module] = targets
    return graph


def find_cycle(graph):
    """One import circle of ``graph`` as a list of modules (first == last), else None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _part(module):
    """The package part (a ``LAYERS`` entry) that ``module`` belongs to."""
    parts = [p for layer in LAYERS for p in layer]
    matches = [p for p in parts if module == p or module.startswith(p + ".")]
    return max(matches, key=len)


def upward_imports(graph):
    """(importer, imported) pairs where a module imports from a part of its own layer or of a
    higher one (other than its own part), by :data:`LAYERS`."""
    layer = {p: i for i, parts in enumerate(LAYERS) for p in parts}
    bad = []
    for module, targets in graph.items():
        own = _part(module)
        for target in targets:
            other = _part(target)
            if other != own and layer[other] >= layer[own]:
                bad.append((module, target))
    return sorted(bad)


def _is_private(name):
    last = name.rpartition(".")[2]
    return last.startswith("_") and not (last.startswith("__") and last.endswith("__"))


def private_imports(sources, packages):
    """(module, name) of each private (``_``) name a module takes from another module of the
    package: ``from m import _x``, ``m._x`` on an imported module ``m``, or a private module
    ``_m`` imported from outside the package that holds it."""
    bad = []
    for module, source in sources.items():
        aliases = {}
        for node, imported, names in _import_nodes(module, source, module in packages):
            if not imported.startswith("fpn_plugin"):
                continue
            home = _resolve(imported, sources)
            if home and _is_private(home) and not module.startswith(home.rpartition(".")[0]):
                bad.append((module, home))
            for a in node.names:
                full = f"{imported}.{a.name}" if names else a.name
                if names and _is_private(a.name) and full not in sources:
                    bad.append((module, full))
                if full in sources:  # a module, bound to its alias or to its first part
                    bound = a.asname or (a.name if names else a.name.split(".")[0])
                    aliases[bound] = full if (names or a.asname) else bound
        for node in ast.walk(ast.parse(source)):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and _is_private(node.attr)
            ):
                bad.append((module, f"{aliases[node.value.id]}.{node.attr}"))
    return sorted(set(bad))


def file_uses(sources):
    """Modules that read ``__file__`` (their own or another module's)."""
    return sorted(
        module
        for module, source in sources.items()
        for node in ast.walk(ast.parse(source))
        if (isinstance(node, ast.Name) and node.id == "__file__")
        or (isinstance(node, ast.Attribute) and node.attr == "__file__")
    )


def _packages(sources):
    return {m for m in sources if os.path.isdir(os.path.join(REPO, *m.split(".")))}


def test_the_package_imports_downwards_only_and_without_circles():
    sources = _package_sources()
    graph = import_graph(sources, _packages(sources))
    assert len(graph) >= 40 and "fpn_plugin.accel.accelerate" in graph["fpn_plugin.accel"]
    assert find_cycle(graph) is None, find_cycle(graph)
    assert upward_imports(graph) == []
    # Every part of the package has its layer.
    tops = {m.split(".")[1] for m in sources if m.count(".") >= 1}
    assert {f"fpn_plugin.{t}" for t in tops} <= {p for layer in LAYERS for p in layer}


def test_the_graph_checks_see_circles_and_upward_imports():
    sources = {
        "fpn_plugin.accel": "from .strategy import Strategy\n",
        "fpn_plugin.accel.strategy": "from ..engine.trainer import FPNTrainer\n",
        "fpn_plugin.engine": "",
        "fpn_plugin.engine.trainer": "from fpn_plugin.accel import Strategy\n",
        "fpn_plugin.data.shapes.drawing": "import fpn_plugin.data.shapes.cache as c\nc._x\n",
        "fpn_plugin.data.shapes.cache": "from .drawing import _y\nfrom .. import _util\n",
        "fpn_plugin.data": "",
        "fpn_plugin.data.shapes": "",
        "fpn_plugin.data._util": "",
        "fpn_plugin.modeling.neck": "x = __file__\n",
    }
    packages = {
        "fpn_plugin.accel",
        "fpn_plugin.engine",
        "fpn_plugin.data",
        "fpn_plugin.data.shapes",
    }
    graph = import_graph(sources, packages)
    assert find_cycle(graph) == [
        "fpn_plugin.accel",
        "fpn_plugin.accel.strategy",
        "fpn_plugin.engine.trainer",
        "fpn_plugin.accel",
    ]
    assert upward_imports(graph) == [("fpn_plugin.accel.strategy", "fpn_plugin.engine.trainer")]
    assert private_imports(sources, packages) == [
        ("fpn_plugin.data.shapes.cache", "fpn_plugin.data.shapes.drawing._y"),
        ("fpn_plugin.data.shapes.drawing", "fpn_plugin.data.shapes.cache._x"),
    ]
    assert file_uses(sources) == ["fpn_plugin.modeling.neck"]


def test_private_names_stay_in_their_module():
    sources = _package_sources()
    assert private_imports(sources, _packages(sources)) == []


def test_nothing_in_the_package_reaches_outside_it_through_file():
    """A file beside the package (configs/, tools/) is not there in an installed copy: the tools
    pass such paths in; data inside the package is read with importlib.resources."""
    assert file_uses(_package_sources()) == []


def test_the_package_patches_no_module_globals():
    """Detectron2 is extended by overriding methods: no ``unittest.mock`` in production code."""
    sources = _package_sources()
    patching = [
        module
        for module, source in sources.items()
        for _, imported, names in _import_nodes(module, source, module in _packages(sources))
        if imported.startswith("unittest")
    ]
    assert patching == []
