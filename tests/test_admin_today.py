"""The admin and today's API (spec 2.3.0): Responses calls read as conversations, speech plays,
gpt-image-1 images show, calls about one upstream object link to each other, and replay and
compare work for Responses. Calls are made through the real gateway (SDK or HTTP -> live
server -> stand-in upstream); pages are rendered by Django's test client as a superuser."""

import ast
import pathlib

ADMIN = pathlib.Path(__file__).resolve().parent.parent / "openai_django" / "admin"


# -- the admin's module graph -------------------------------------------------------------------


def admin_imports(path):
    """The admin modules ``path`` imports (at module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "openai_django.admin" or (node.level == 1 and not node.module):
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("openai_django.admin."):
                found.add(node.module.rsplit(".", 1)[1])
            elif node.level == 1:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name.rsplit(".", 1)[1] for a in node.names
                         if a.name.startswith("openai_django.admin."))
    modules = {p.stem for p in ADMIN.glob("*.py")}
    return found & modules - {path.stem}


def test_admin_modules_import_each_other_without_a_circle():
    graph = {p.stem: admin_imports(p) for p in ADMIN.glob("*.py") if p.stem != "__init__"}
    state = {}

    def visit(node, trail):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", f"import circle: {' -> '.join(trail + [node])}"
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            visit(target, trail + [node])
        state[node] = "done"

    for module in sorted(graph):
        visit(module, [])
    assert "calls" not in graph["replay"] | graph["usage"] | graph["formatting"]
