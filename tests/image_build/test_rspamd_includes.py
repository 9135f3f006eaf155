"""The image's rspamd takes a signature set's rules from the data partition.

On the image /etc/rspamd is on the read-only root, so image_build/build.py ships one
``local.d/<module>.conf`` per module a set may change (`RSPAMD_SET_MODULES`), each an
``.include(try=true)`` of the same name in /var/lib/rspamd/local.d, where edgebox
installs the set (appliance.protection.signatures.sync). Checked against Debian's real
rspamd configuration with ``rspamadm``: every name is a local.d file Debian's rspamd
reads, a rule installed there is merged into its module, and with nothing installed yet
the configuration is still valid.
"""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

from appliance.protection.signatures.sync import RSPAMD_SET_MODULES, SYSTEM_RSPAMD_LOCAL
from tests.harness import missing_prerequisite, require_tool

BUILD = Path(__file__).parents[2] / "image_build" / "build.py"
DEBIAN = Path("/etc/rspamd")
RULE = """EDGEBOX_SET_MARKER {
  re = "/edgebox-set-marker/i{body}";
  score = 7.5;
}
"""


def includes(out: Path, folder: Path | None = None) -> None:
    spec = importlib.util.spec_from_file_location("image_build_script", BUILD)
    assert spec is not None
    assert spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    build._rspamd_includes(out, str(folder) if folder else None)


def rspamadm(local_confdir: Path, *args: str) -> str:
    done = subprocess.run(
        [require_tool("rspamadm"), f"--var=LOCAL_CONFDIR={local_confdir}", *args,
         "-c", str(DEBIAN / "rspamd.conf")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_image_includes_each_module_file_from_the_data_partition(tmp_path: Path) -> None:
    includes(tmp_path)
    assert sorted(p.stem for p in tmp_path.iterdir()) == sorted(RSPAMD_SET_MODULES)
    for module in RSPAMD_SET_MODULES:
        text = (tmp_path / f"{module}.conf").read_text()
        assert f'"{SYSTEM_RSPAMD_LOCAL}/{module}.conf"' in text
        assert ".include(try=true," in text


def test_debian_s_rspamd_merges_a_set_s_rule_through_the_include(tmp_path: Path) -> None:
    if not (DEBIAN / "rspamd.conf").is_file():
        missing_prerequisite("Debian's rspamd is not installed")
    confdir, data = tmp_path / "etc", tmp_path / "var-lib-rspamd-local.d"
    data.mkdir()
    includes(confdir / "local.d", data)
    # Every name is one Debian's rspamd reads from local.d (else the include is dead).
    read = "".join(p.read_text() for p in DEBIAN.rglob("*") if p.is_file() and
                   p.suffix in (".conf", ".inc"))  # fmt: skip
    for module in RSPAMD_SET_MODULES:
        assert f"$LOCAL_CONFDIR/local.d/{module}.conf" in read, module
    # Nothing installed yet: still a valid configuration (try=true).
    assert "syntax OK" in rspamadm(confdir, "configtest")
    assert "EDGEBOX_SET_MARKER" not in rspamadm(confdir, "configdump", "regexp")
    # A set's regexp.conf on the data partition: merged into the regexp module.
    (data / "regexp.conf").write_text(RULE)
    dumped = rspamadm(confdir, "configdump", "regexp")
    assert "EDGEBOX_SET_MARKER" in dumped
    assert "score = 7.5" in dumped
