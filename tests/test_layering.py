"""No import runs upward: the layers of docs/architecture.md, checked on every module.

Every module under ``appliance/`` and ``hw/`` belongs to one entry of `LAYERS` (the
longest module prefix that names it). A module may import

- any module of its own entry (a capability's folder is one room), and
- any module of an entry in a lower layer;

never a module of a higher layer, and never one of another entry in its own layer:
entries that share a layer are peers that stay independent (mail and chat, sync and
backup). Protocol cores (the bottom layer) also import no I/O at all: no trio, no
sockets, no clock (DESIGN.md principle 1).

The map is read by `ast`, not by importing anything, so it sees imports inside
functions and under ``TYPE_CHECKING`` too: a type is a dependency as well. A new
module inherits its folder's entry; a new top-level folder must be placed here (the
test says so), and so must a new protocol core.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("appliance", "hw")


@dataclass(frozen=True)
class Layer:
    name: str
    #: Module prefixes; each is one entry (``appliance.mail`` is the mail folder).
    entries: tuple[str, ...]
    #: Whether its entries may import each other (protocol cores share their codecs).
    open: bool = False


#: Bottom first; docs/architecture.md ("Layers") says what each is for.
LAYERS: tuple[Layer, ...] = (
    # Sans-I/O protocol cores: bytes in, events out; they import only each other.
    Layer(
        "protocol cores",
        (
            "appliance.mail.smtp.protocol",
            "appliance.mail.smtp.client",
            # The MX workers' hand-off frames (appliance.mail.smtp.pool moves them).
            "appliance.mail.smtp.handoff",
            "appliance.mail.imap.protocol",
            "appliance.mail.imap.client",
            "appliance.mail.imap.mutf7",
            "appliance.mail.mime",
            "appliance.sync.codec",
            # Checks of untrusted text and JSON, shared by the codecs.
            "appliance.security.untrusted",
            "hw.panel_link",
            # The scanning engines' wire protocols (clamd INSTREAM, rspamd /checkv2).
            "appliance.protection.clamd",
            "appliance.protection.rspamd",
        ),
        open=True,
    ),
    # Settings, the stores, the hardware seen from Linux (each device with its twin).
    Layer("ground", ("appliance", "appliance.config", "appliance.store", "hw")),
    # Keys and TLS, the sign-in guard; the traffic log and classification; who the box is.
    Layer("records", ("appliance.security", "appliance.compliance", "appliance.identity")),
    # Agencies, users, sessions, sign-in, who administers what.
    Layer("directory", ("appliance.directory",)),
    # The generic network layer: listeners, HTTP/1.1, TLS streams (web and hub use it).
    Layer("net", ("appliance.net",)),
    # The HTTPS server, routes and the pages' kit; health's readings, checks and metrics.
    Layer("framework", ("appliance.web", "appliance.health")),
    # Anti-virus and anti-spam: what every way in asks before it accepts (issue 23).
    # One room in several entries, so mail and chat may use it while the protection
    # folder's DKIM part stays above them.
    Layer(
        "scanning",
        (
            "appliance.protection.scanner",
            "appliance.protection.verdict",
            "appliance.protection.smtp",
            "appliance.protection.notice",
            "appliance.protection.engines",
            "appliance.protection.health",
        ),
        open=True,
    ),
    # The domain capabilities, each with its services and routes.
    Layer("domain", ("appliance.mail", "appliance.chat")),
    # Mail protection: DKIM signing (where mail leaves) and verification (at the MX).
    Layer("protection", ("appliance.protection",)),
    # The opened data directory: the domain objects of one box.
    Layer("box", ("appliance.box",)),
    # What works on the whole box's data: the uplink and the hub; backups.
    Layer("uplink", ("appliance.sync", "appliance.backup")),
    # The box's life: its states, setup path, USB stick, factory reset; A/B updates.
    # Offsite backups join the backup and the uplink: the hub's routes, the box's upload.
    Layer("lifecycle", ("appliance.provisioning", "appliance.update", "appliance.backup.offsite")),
    # Services around the box: mDNS, the front panel, the watchdog, the health monitor,
    # and the supervisor that runs services.
    Layer(
        "box services",
        (
            "appliance.discovery",
            "appliance.panel",
            "appliance.watchdog",
            "appliance.health.monitor",
            "appliance.supervisor",
            # Signature sets: trusted like provisioning sticks, carried by the uplink.
            "appliance.protection.signatures",
        ),
    ),
    # The admin console: it reads every capability.
    Layer("presentation", ("appliance.admin",)),
    # Capabilities' sub-commands of `edgebox` (they open the box themselves).
    # (A restore from the hub re-enrols the blank box: provisioning and offsite.)
    Layer(
        "commands",
        (
            "appliance.protection.dkim_commands",
            "appliance.update.commands",
            "appliance.backup.hub_restore",
        ),
    ),
    # The composition root: which services and routes, each handed its parts.
    # (An MX worker process composes its one service beside it: appliance.smtp_worker.)
    Layer("registry", ("appliance.registry", "appliance.smtp_worker")),
    Layer("command", ("appliance.cli",)),
    Layer("entry point", ("appliance.__main__",)),
)

#: Entries that other parts of issue 17 are creating or moving away right now: the
#: stale-entry check forgives them while they are on the way. (The pure codecs and
#: mime.py beside mail have landed.)
MOVING: frozenset[str] = frozenset()

#: Imports allowed against the rule, each with its reason and the change that ends it.
#: Keep it short: an entry here is a debt.
EXCEPTIONS: frozenset[tuple[str, str]] = frozenset()

#: What a protocol core must not import: it would bring I/O or a clock into the core.
IO_MODULES = frozenset({"trio", "socket", "ssl", "asyncio", "selectors", "threading", "time"})


@cache
def modules() -> dict[str, Path]:
    """Every module of `PACKAGES` by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def entry_of(module: str) -> str | None:
    """The entry of `LAYERS` that names *module*: the longest matching prefix."""
    best: str | None = None
    for layer in LAYERS:
        for entry in layer.entries:
            # "appliance" itself is the package's __init__ only, not a catch-all.
            exact = entry == "appliance"
            hit = module == entry or (not exact and module.startswith(entry + "."))
            if hit and (best is None or len(entry) > len(best)):
                best = entry
    return best


def rank(entry: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if entry in layer.entries)


def imports_of(module: str) -> set[str]:
    """The modules *module* imports: ours by dotted name, others by top-level name.

    ``from package import name`` counts as importing ``package.name`` when that is a
    module, else as importing ``package`` (its ``__init__``).
    """
    path = modules()[module]
    tree = ast.parse(path.read_text("utf-8"), str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                # A relative import: resolve it against this module's package.
                package = module.split(".")
                if not is_package:
                    package = package[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, *([base] if base else [])])
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in modules() else base)
    return {name if name.split(".")[0] in PACKAGES else name.split(".")[0] for name in found}


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(module for module in modules() if entry_of(module) is None)
    assert not unplaced, (
        f"place these in LAYERS (tests/test_layering.py) and docs/architecture.md: {unplaced}"
    )


def test_every_entry_names_modules() -> None:
    """A stale entry (a module moved away) must not keep its place in the map."""
    stale = [
        entry
        for layer in LAYERS
        for entry in layer.entries
        if entry not in MOVING
        and not any(m == entry or m.startswith(entry + ".") for m in modules())
    ]
    assert not stale, f"no module under these entries any more: {stale}"


def test_exceptions_are_still_needed() -> None:
    unused = sorted(
        (importer, imported)
        for importer, imported in EXCEPTIONS
        if importer not in modules() or imported not in imports_of(importer)
    )
    assert not unused, f"drop these from EXCEPTIONS, the import is gone: {unused}"


def violations(graph: dict[str, set[str]]) -> list[str]:
    """The imports of *graph* (module -> what it imports) against the layers."""
    wrong: list[str] = []
    for module, imported_modules in sorted(graph.items()):
        entry = entry_of(module)
        assert entry is not None, module
        for imported in sorted(imported_modules):
            if imported.split(".")[0] not in PACKAGES or (module, imported) in EXCEPTIONS:
                continue
            target = entry_of(imported)
            if target is None or target == entry:
                continue
            if rank(target) < rank(entry) or (
                rank(target) == rank(entry) and LAYERS[rank(entry)].open
            ):
                continue
            where = "a peer in its own layer" if rank(target) == rank(entry) else "a layer above"
            wrong.append(
                f"{module} ({LAYERS[rank(entry)].name}) imports {imported}:"
                f" {where} ({LAYERS[rank(target)].name})"
            )
    return wrong


def test_no_import_runs_upward() -> None:
    wrong = violations({module: imports_of(module) for module in modules()})
    assert not wrong, "imports against docs/architecture.md's layers:\n" + "\n".join(wrong)


#: The modules that may import appliance.box: the composition root and the command,
#: and what makes or opens a box's data directory itself. Everything else is handed the
#: parts it uses (docs/architecture.md, "The registry"); who needs the box's identity
#: reads appliance.identity.
BOX_USERS: frozenset[str] = frozenset(
    {
        "appliance.cli",
        "appliance.registry",
        # An MX worker process's own composition root: it opens the box read-only.
        "appliance.smtp_worker",
        # Provisioning makes the data directory (init_box); the USB stick and the
        # setup wizard add users.
        "appliance.provisioning.provision",
        "appliance.provisioning.usb",
        "appliance.provisioning.wizard_pages",
        # Sub-commands that open the box, and the update's health gate after a reboot.
        "appliance.protection.dkim_commands",
        "appliance.update.commands",
        "appliance.update.confirm",
    }
)


def test_only_the_composition_root_hands_out_the_box() -> None:
    users = {module for module in modules() if "appliance.box" in imports_of(module)}
    assert users <= BOX_USERS, (
        f"these take the whole Box; hand them its parts instead: {sorted(users - BOX_USERS)}"
    )


def test_the_architecture_page_lists_the_same_layers() -> None:
    """docs/architecture.md draws the layers top first; the names must match `LAYERS`."""
    page = (ROOT / "docs" / "architecture.md").read_text("utf-8")
    block = page.split("## Layers", 1)[1].split("```", 2)[1]
    drawn = [line.split("  ")[0] for line in block.splitlines() if line and line[0] != " "]
    assert drawn == [layer.name for layer in reversed(LAYERS)]


def test_the_check_catches_upward_and_sideways_imports() -> None:
    graph = {
        "appliance.mail.smtp.server": {"appliance.box", "appliance.directory", "trio"},
        "appliance.chat.pages": {"appliance.mail.mailstore", "appliance.chat.store"},
        "appliance.mail.imap.protocol": {"appliance.mail.imap.mutf7"},
        "appliance.registry": {"appliance.box", "appliance.sync.link"},
    }
    assert violations(graph) == [
        "appliance.chat.pages (domain) imports appliance.mail.mailstore:"
        " a peer in its own layer (domain)",
        "appliance.mail.smtp.server (domain) imports appliance.box: a layer above (box)",
    ]


@pytest.mark.parametrize("core", LAYERS[0].entries)
def test_protocol_cores_do_no_io(core: str) -> None:
    if core in MOVING and not any(m == core or m.startswith(core + ".") for m in modules()):
        pytest.skip(f"{core} is on its way")
    io = sorted(
        name
        for module in modules()
        if module == core or module.startswith(core + ".")
        for name in imports_of(module) & IO_MODULES
    )
    assert not io, f"{core} is a sans-I/O protocol core but imports {io}"


def test_entries_are_found_by_the_longest_prefix() -> None:
    assert entry_of("appliance.health.monitor") == "appliance.health.monitor"
    assert entry_of("appliance.health.checks.disk") == "appliance.health"
    assert entry_of("appliance.mail.imap.protocol") == "appliance.mail.imap.protocol"
    assert entry_of("appliance.mail.imap.session") == "appliance.mail"
    assert entry_of("appliance.newthing") is None
    assert entry_of("appliance") == "appliance"  # the package's __init__, no catch-all
