"""Dependencies point one way: the data layer imports nothing from objectives/, train/ or evaluate/."""

import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "audiossl_jax")


def _imports(path):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def test_no_data_module_imports_objectives_train_or_evaluate():
    data = os.path.join(PACKAGE, "data")
    bad = [
        (name, module)
        for name in sorted(os.listdir(data))
        if name.endswith(".py")
        for module in _imports(os.path.join(data, name))
        if module.startswith(("audiossl_jax.objectives", "audiossl_jax.train", "audiossl_jax.evaluate"))
    ]
    assert bad == []
