"""Several broker addresses in CONVEYOR_AMQP_URL, the order they are tried in, TLS settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.broker.addresses import AddressRotation, redact_urls, split_broker_urls
from service.settings import SettingError, load_settings


def test_one_url_is_one_address() -> None:
    assert split_broker_urls("amqp://u:p@h:5672/") == ("amqp://u:p@h:5672/",)


def test_comma_separated_urls_are_each_an_address() -> None:
    raw = "amqp://u:p@h1:5672/, amqps://u:p@h2:5671/vh"
    assert split_broker_urls(raw) == ("amqp://u:p@h1:5672/", "amqps://u:p@h2:5671/vh")


def test_a_host_list_shares_credentials_vhost_and_query() -> None:
    urls = split_broker_urls("amqp://u:p@h1,h2:5673,h3/vh?heartbeat=5")
    assert urls == (
        "amqp://u:p@h1/vh?heartbeat=5",
        "amqp://u:p@h2:5673/vh?heartbeat=5",
        "amqp://u:p@h3/vh?heartbeat=5",
    )


def test_a_host_list_without_credentials_or_path() -> None:
    assert split_broker_urls("amqp://h1,h2:5673") == ("amqp://h1", "amqp://h2:5673")


@pytest.mark.parametrize(
    "raw",
    [
        "amqp://u:p@h1/,",  # an empty address
        "amqp://u:p@h1/,h2",  # a URL, then a bare host
        "http://u:p@h1/",
        "amqp://u:p@h1,:5672/",  # a host list with an empty host
        "amqp://u:p@h1:notaport/",
    ],
)
def test_a_bad_address_is_refused(raw: str) -> None:
    with pytest.raises(ValueError, match=r"address|URL|port"):
        split_broker_urls(raw)


def test_the_error_for_a_bad_url_names_the_setting_and_never_the_password() -> None:
    with pytest.raises(SettingError) as raised:
        load_settings({"CONVEYOR_AMQP_URL": "amqp://u:secret@h1/,http://u:secret@h2/"})
    assert raised.value.name == "CONVEYOR_AMQP_URL"
    assert "secret" not in str(raised.value)


def test_settings_expose_every_address_and_redact_all_passwords() -> None:
    settings = load_settings({"CONVEYOR_AMQP_URL": "amqp://u:secret@h1,h2:5673/vh"})
    assert settings.amqp_addresses == ("amqp://u:secret@h1/vh", "amqp://u:secret@h2:5673/vh")
    assert settings.amqp_url_redacted == "amqp://u:***@h1/vh,amqp://u:***@h2:5673/vh"
    assert "secret" not in redact_urls(settings.amqp_addresses)


def test_rotation_tries_each_address_once_from_the_current_one() -> None:
    rotation = AddressRotation(["a", "b", "c"], start=1)
    assert rotation.in_turn() == ["b", "c", "a"]
    rotation.move_past("c")
    assert rotation.current == "a"
    assert rotation.in_turn() == ["a", "b", "c"]
    rotation.settle_on("b")
    assert rotation.current == "b"


def test_rotation_starts_anywhere_so_replicas_spread() -> None:
    starts = {AddressRotation(["a", "b", "c"]).current for _ in range(200)}
    assert starts == {"a", "b", "c"}


def test_failover_time_is_a_duration() -> None:
    assert load_settings({}).amqp_failover_after == 3.0
    assert load_settings({"CONVEYOR_AMQP_FAILOVER_AFTER": "500ms"}).amqp_failover_after == 0.5
    with pytest.raises(SettingError, match="CONVEYOR_AMQP_FAILOVER_AFTER"):
        load_settings({"CONVEYOR_AMQP_FAILOVER_AFTER": "soon"})


def test_no_tls_settings_means_no_context_of_ours() -> None:
    settings = load_settings({"CONVEYOR_AMQP_URL": "amqps://u:p@h/"})
    assert settings.amqp_tls_context() is None


def test_a_missing_tls_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingError) as raised:
        load_settings(
            {
                "CONVEYOR_AMQP_URL": "amqps://u:p@h/",
                "CONVEYOR_AMQP_CA_FILE": str(tmp_path / "nowhere.pem"),
            }
        )
    assert raised.value.name == "CONVEYOR_AMQP_CA_FILE"
    assert "readable file" in str(raised.value)


def test_a_ca_file_that_is_not_pem_is_named(tmp_path: Path) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(SettingError) as raised:
        load_settings(
            {"CONVEYOR_AMQP_URL": "amqps://u:p@h/", "CONVEYOR_AMQP_CA_FILE": str(garbage)}
        )
    assert raised.value.name == "CONVEYOR_AMQP_CA_FILE"


def test_tls_settings_without_an_amqps_address_are_a_mistake(tmp_path: Path) -> None:
    with pytest.raises(SettingError) as raised:
        load_settings({"CONVEYOR_AMQP_URL": "amqp://u:p@h/", "CONVEYOR_AMQP_VERIFY_HOSTNAME": "0"})
    assert raised.value.name == "CONVEYOR_AMQP_VERIFY_HOSTNAME"
    assert "amqps://" in str(raised.value)


def test_a_key_without_a_certificate_is_a_mistake(tmp_path: Path) -> None:
    key = tmp_path / "client.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    with pytest.raises(SettingError) as raised:
        load_settings({"CONVEYOR_AMQP_URL": "amqps://u:p@h/", "CONVEYOR_AMQP_KEY_FILE": str(key)})
    assert raised.value.name == "CONVEYOR_AMQP_KEY_FILE"


def test_hostname_check_can_be_turned_off_but_not_the_chain() -> None:
    settings = load_settings(
        {"CONVEYOR_AMQP_URL": "amqps://u:p@h/", "CONVEYOR_AMQP_VERIFY_HOSTNAME": "0"}
    )
    context = settings.amqp_tls_context()
    assert context is not None
    assert context.check_hostname is False
    assert context.verify_mode.name == "CERT_REQUIRED"
