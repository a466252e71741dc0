"""Each setting is declared once: the table in docs/settings.md, `conveyor serve --help` and the
redaction of secrets all follow the declarations on the Settings fields."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from service.cli.main import main
from service.settings import DECLARED_SETTINGS, SettingError, Settings, load_settings
from service.settings_reader import declared

SETTINGS_DOC = Path(__file__).resolve().parents[2] / "docs" / "settings.md"
_HEADER = re.compile(r"^\|\s*(setting|name)\s*\|\s*default\s*\|\s*meaning\s*\|$")
_VARIABLE = re.compile(r"^`(CONVEYOR_[A-Z_]+)`$")


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def settings_table(text: str) -> dict[str, str]:
    """The settings table as {variable: default}, backticks dropped from the default."""
    lines = text.splitlines()
    (start,) = [n for n, line in enumerate(lines) if _HEADER.match(line.strip())]
    rows: dict[str, str] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        name, default, _meaning = _cells(line)
        variable = _VARIABLE.match(name)
        assert variable, f"a settings row names one `CONVEYOR_*` variable: {name!r}"
        assert variable.group(1) not in rows, f"{variable.group(1)} has two rows"
        rows[variable.group(1)] = default.replace("`", "")
    return rows


def test_the_readme_settings_table_matches_the_declarations() -> None:
    table = settings_table(SETTINGS_DOC.read_text(encoding="utf-8"))
    declarations = {declaration.variable: declaration.default for declaration in DECLARED_SETTINGS}

    assert sorted(set(declarations) - set(table)) == [], "declared, no row in docs/settings.md"
    assert sorted(set(table) - set(declarations)) == [], "a row in docs/settings.md, not declared"
    assert {name: (table[name], default) for name, default in declarations.items()} == {
        name: (default, default) for name, default in declarations.items()
    }, "(documented default, declared default)"


def test_the_table_reader_sees_a_missing_row_and_a_wrong_default() -> None:
    table = (
        "| setting | default | meaning |\n| --- | --- | --- |\n"
        "| `CONVEYOR_HTTP_PORT` | `8081` | port |\n| `CONVEYOR_ROLE` | `all` | role |\n\nmore\n"
    )
    assert settings_table(table) == {"CONVEYOR_HTTP_PORT": "8081", "CONVEYOR_ROLE": "all"}
    with pytest.raises(AssertionError, match="one `CONVEYOR_"):
        settings_table(table.replace("`CONVEYOR_ROLE`", "`CONVEYOR_A` / `CONVEYOR_B`"))


def test_every_settings_field_is_declared_with_its_true_default() -> None:
    by_field = declared(dataclasses.fields(Settings))
    defaults = Settings()

    assert list(by_field.values()) == list(DECLARED_SETTINGS)
    assert len({declaration.name for declaration in DECLARED_SETTINGS}) == len(DECLARED_SETTINGS)
    for name, declaration in by_field.items():
        value = getattr(defaults, name)
        if value in (None, frozenset(), ()):
            continue  # no value: the declared default describes what unset means
        assert declaration.parse(declaration.default) == value, declaration.variable
        assert load_settings({declaration.variable: declaration.default}) == defaults


def test_serve_help_lists_every_declared_setting_with_its_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    lines = capsys.readouterr().out.splitlines()

    for declaration in DECLARED_SETTINGS:
        (line,) = [line for line in lines if line.split()[:1] == [declaration.variable]]
        assert line.endswith(f"{declaration.help} (default: {declaration.default})")


def test_the_secret_flag_keeps_values_out_of_repr_and_errors() -> None:
    secret = {declaration.variable for declaration in DECLARED_SETTINGS if declaration.secret}
    assert secret == {
        "CONVEYOR_AMQP_URL",
        "CONVEYOR_API_KEYS",
        "CONVEYOR_STORE_URL",
        "CONVEYOR_ADMIN_TOKEN",
    }
    by_field = declared(dataclasses.fields(Settings))
    for field in dataclasses.fields(Settings):
        assert field.repr is not by_field[field.name].secret, field.name


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CONVEYOR_AMQP_URL", "redis://user:topsecret@broker/"),
        ("CONVEYOR_AMQP_URL", "amqp://user:topsecret@broker:99999/"),
        ("CONVEYOR_STORE_URL", "mysql://user:topsecret@db/conveyor"),
        ("CONVEYOR_STORE_URL", "postgresql://user:topsecret@db:0/conveyor"),
        ("CONVEYOR_ADMIN_TOKEN", "topsecret"),
        ("CONVEYOR_ADMIN_TOKEN", "bad name:topsecret-topsecret"),
    ],
)
def test_an_error_about_a_secret_setting_never_shows_its_value(name: str, value: str) -> None:
    with pytest.raises(SettingError) as raised:
        load_settings({name: value})
    assert raised.value.name == name
    assert "topsecret" not in str(raised.value)
