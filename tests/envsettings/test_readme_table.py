"""The README's configuration table and the settings classes name the same variables."""

from __future__ import annotations

import re

from dyno.entrypoint import Settings as DynoSettings
from envsettings import EnvSettings
from export.settings import ExportSettings
from gateway.settings import Settings as GatewaySettings
from serving.settings import Settings as ServingSettings
from sync.settings import S3Settings
from sync.settings import Settings as SyncSettings
from tests.support import REPO_ROOT

SETTINGS: tuple[type[EnvSettings], ...] = (
    DynoSettings,
    GatewaySettings,
    SyncSettings,
    S3Settings,
    ServingSettings,
    ExportSettings,
)


def configuration_rows() -> dict[str, str]:
    """Variable -> its row, from the tables of the README's Configuration section."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = line.split(" | ")
        if line.startswith("| `") and len(cells) >= 3:
            for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0]):
                rows[name] = line
    return rows


def supervisord_variables() -> set[str]:
    """The variables supervisord.conf itself expands (the dyno's table)."""
    conf = (REPO_ROOT / "supervisord.conf").read_text()
    lines = (line for line in conf.splitlines() if not line.startswith(";"))
    return set(re.findall(r"%\(ENV_([A-Z0-9_]+)\)s", "\n".join(lines)))


def test_every_variable_a_settings_class_reads_is_in_the_table() -> None:
    rows = configuration_rows()
    for settings in SETTINGS:
        for field, (name, *fallbacks) in settings.variables().items():
            assert name in rows, f"{settings.__module__}.{field}: {name} is not in the README"
            for fallback in fallbacks:
                assert fallback in rows[name], f"{name}'s row does not name {fallback}"


def test_every_variable_in_the_table_is_read() -> None:
    read = supervisord_variables()
    for settings in SETTINGS:
        read |= {names[0] for names in settings.variables().values()}
    unread = set(configuration_rows()) - read
    assert not unread, f"the README documents variables nothing reads: {sorted(unread)}"
