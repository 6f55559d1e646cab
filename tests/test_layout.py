"""The package's layout: imports go one way (no cycle, none hidden inside a function), the
training step and the loop stay short enough to read, and no code outside the method registry
compares method names."""

import ast
import inspect
import re
from pathlib import Path

import lora_jax
import lora_jax.run
import lora_jax.train

PACKAGE = Path(lora_jax.train.__file__).parent


def imports(path: Path) -> dict[str, list[int]]:
    """``lora_jax`` modules that ``path`` imports -> the lines that import them (anywhere in
    the file, function bodies included)."""
    found: dict[str, list[int]] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lora_jax"):
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("lora_jax")]
        for name in names:
            found.setdefault(name.removeprefix("lora_jax.").removeprefix("lora_jax"), []).append(
                node.lineno)
    return found


def graph() -> dict[str, set[str]]:
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    return {m: set(imports(PACKAGE / f"{m}.py")) & modules for m in modules}


def test_the_import_graph_has_no_cycle():
    g, state, path = graph(), {}, []

    def visit(m):
        state[m] = "open"
        path.append(m)
        for n in sorted(g[m]):
            if state.get(n) == "open":
                cycle = path[path.index(n):] + [n]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if n not in state:
                visit(n)
        path.pop()
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m)


def test_no_module_imports_the_package_inside_a_function():
    """A function-local import is how a cycle hides; every import sits at the top."""
    hidden = []
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                            "lora_jax"):
                        hidden.append(f"{path.name}:{node.lineno} {node.module}")
    assert not hidden, hidden


def test_the_step_and_the_loop_are_short():
    """``train.py`` is the file a student reads first; ``fit`` reads as set-up, loop, finish."""
    assert len((PACKAGE / "train.py").read_text().splitlines()) <= 300
    source = inspect.getsource(lora_jax.run.fit)
    doc = inspect.getdoc(lora_jax.run.fit)
    body = source.split('"""', 2)[2]  # after the docstring
    assert doc and len(body.strip().splitlines()) <= 60, len(body.strip().splitlines())


def test_no_method_name_is_compared_outside_the_registry():
    names = "full|lora|bitfit|adapter|head"
    compared = re.compile(rf'(==|!=|\bin)\s*\(?\s*"({names})"|"({names})"\s*(==|!=)')
    found = [f"{p.name}:{n}: {line.strip()}" for p in PACKAGE.glob("*.py") if p.name != "methods.py"
             for n, line in enumerate(p.read_text().splitlines(), 1) if compared.search(line)]
    assert not found, found


def test_every_name_the_notebooks_readme_and_slides_import_is_public():
    """What a student copies from a notebook, the README or a slide is ``lora_jax``'s public
    API (``__all__``). Exceptions: ``lora_jax.notebook`` (the notebooks' own helpers) and the
    ``compare`` function, which shares its module's name."""
    import json

    root = PACKAGE.parent
    sources = {}
    for nb in sorted((root / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
        sources[nb.name] = "\n".join(line for cell in code for line in cell.splitlines()
                                     if not line.startswith(("%", "!")))
    for doc in ("README.md", "slides/lora.md"):
        text = (root / doc).read_text(encoding="utf-8")
        sources[doc] = "\n".join(re.findall(r"```python\n(.*?)```", text, re.S))
    allowed = {("lora_jax.compare", "compare")}
    private = []
    for where, src in sources.items():
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lora_jax"):
                if node.module == "lora_jax.notebook":
                    continue
                private += [f"{where}: {node.module}.{a.name}" for a in node.names
                            if a.name not in lora_jax.__all__
                            and (node.module, a.name) not in allowed]
    assert not private, private
