"""The pages' scripts as ES modules: every import resolves to a static file that exports it.

A browser refuses a whole module graph when one ``import { name } from "./file.js"``
names a file the box does not serve or a name the file does not export; the page then
runs none of its script. This reads the graph from the files themselves, so a split or a
rename that breaks it fails here, not only in a browser (tests/e2e/browser).
"""

from __future__ import annotations

import re

import pytest

from appliance.web.pages import TEMPLATES, load_static

IMPORT = re.compile(r'^import\s*\{([^}]*)\}\s*from\s*"\./([^"]+)";', re.MULTILINE)
EXPORT = re.compile(
    r"^export\s+(?:async\s+)?(?:function|const|let|class)\s+([A-Za-z_$][\w$]*)", re.MULTILINE
)
SCRIPT = re.compile(r"""<script type="module" src="\{\{ static\('([^']+)'\) \}\}"></script>""")

STATIC = load_static()
MODULES = {name: file.content.decode() for name, file in STATIC.items() if name.endswith(".js")}


def imports(source: str) -> list[tuple[str, list[str]]]:
    """Each relative import of *source*: the file and the names taken from it."""
    found = []
    for names, target in IMPORT.findall(source):
        taken = [part.split(" as ")[0].strip() for part in names.split(",") if part.strip()]
        found.append((target, taken))
    return found


def test_the_graph_is_read() -> None:
    # The patterns above find what the files hold (else every check below is empty).
    assert ("common.js", ["el", "tr"]) in imports(MODULES["chat-stream.js"])
    exported = set(EXPORT.findall(MODULES["chat-names.js"]))
    assert exported == {"names", "nameOf", "learnName", "nameNode"}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_import_is_a_served_file_exporting_the_names(name: str) -> None:
    source = MODULES[name]
    # Relative imports only: the box serves its own files and nothing else (the CSP).
    assert not re.search(r'^import[^;]*from\s*"(?!\./)', source, re.MULTILINE), name
    for target, taken in imports(source):
        assert target in MODULES, f"{name} imports {target}, which is not served"
        exported = set(EXPORT.findall(MODULES[target]))
        missing = [n for n in taken if n not in exported]
        assert not missing, f"{name} imports {missing} that {target} does not export"


def test_every_module_is_loaded_by_a_page_or_imported() -> None:
    loaded = {
        script
        for template in TEMPLATES.rglob("*.html")
        for script in SCRIPT.findall(template.read_text())
    }
    assert loaded, "no template loads a module"
    reached: set[str] = set()
    todo = list(loaded)
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        reached.add(name)
        todo.extend(target for target, _ in imports(MODULES[name]))
    assert sorted(set(MODULES) - reached) == []


def test_each_chat_page_loads_only_its_own_module() -> None:
    for page in ("list", "room", "new", "search"):
        text = (TEMPLATES / "chat" / f"{page}.html").read_text()
        assert SCRIPT.findall(text) == [f"chat-{page}.js"], page
