"""The engine's imports go one way (see the autograd module docstring):

    threads, kernels  <-  autograd  <-  ops  <-  conv  <-  nn.functional  <-  nn

Each core module may import only those before it in that order, and only at the
top of the file: no import at the bottom or inside a function to dodge a cycle."""
import ast
import pathlib

import pytest

import minidl

ORDER = ["threads", "kernels", "autograd", "ops", "conv", "nn.functional"]
ROOT = pathlib.Path(minidl.__file__).parent


def _minidl_imports(module):
    """(name, line, at_top) for every import of a minidl module in ``module``."""
    path = ROOT / (module.replace(".", "/") + ".py")
    tree = ast.parse(path.read_text())
    package = module.split(".")[:-1]
    top = {id(node) for node in tree.body}
    first_def = min((node.lineno for node in tree.body
                     if isinstance(node, (ast.FunctionDef, ast.ClassDef))), default=10 ** 9)
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:  # relative: resolve against the package
            base = package[:len(package) - (node.level - 1)]
        elif (node.module or "").startswith("minidl"):
            base, node.module = [], node.module[len("minidl."):] or None
        else:
            continue
        names = [node.module] if node.module else [alias.name for alias in node.names]
        at_top = id(node) in top and node.lineno < first_def
        for name in names:
            yield ".".join(base + name.split(".")), node.lineno, at_top


@pytest.mark.parametrize("module", ORDER)
def test_core_module_imports_only_lower_ones_at_the_top(module):
    allowed = set(ORDER[:ORDER.index(module)])
    for name, line, at_top in _minidl_imports(module):
        assert name in allowed, f"minidl/{module}.py:{line} imports {name}, not below it"
        assert at_top, f"minidl/{module}.py:{line}: import of {name} is not at the top"
