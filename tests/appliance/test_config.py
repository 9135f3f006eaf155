"""Tests of `appliance.config`: defaults < config file < environment < flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.config import BOX_PORTS, DEV_PORTS, Config, ConfigError, load_config

DATA = Path("/var/lib/edgebox-test")


def test_defaults() -> None:
    config = load_config(DATA)

    assert config == Config(data_dir=DATA)
    assert config.data_dir == DATA
    assert config.role == "edge"
    assert config.bind == "127.0.0.1"
    assert config.port_offset == 0
    assert config.hostname == ""
    assert config.max_message_size == 40 * 1024 * 1024
    assert config.max_recipients == 100
    assert config.max_connections == 200
    assert config.idle_timeout == 300.0
    assert config.mx_require_tls is False


def test_config_is_frozen() -> None:
    config = load_config(DATA)
    with pytest.raises(AttributeError):
        config.port_offset = 5  # type: ignore[misc]


def test_file_values_override_defaults() -> None:
    config = load_config(DATA, file_values={"role": "hub", "max_recipients": 50})

    assert config.role == "hub"
    assert config.max_recipients == 50
    assert config.bind == "127.0.0.1"


def test_environment_overrides_file() -> None:
    config = load_config(
        DATA,
        file_values={"port_offset": 100, "hostname": "mail.file.go.th"},
        environ={"EDGEBOX_PORT_OFFSET": "200"},
    )

    assert config.port_offset == 200
    assert config.hostname == "mail.file.go.th"


def test_flags_override_environment_and_file() -> None:
    config = load_config(
        DATA,
        file_values={"port_offset": 100},
        environ={"EDGEBOX_PORT_OFFSET": "200", "EDGEBOX_BIND": "0.0.0.0"},
        flags={"port_offset": 300},
    )

    assert config.port_offset == 300
    assert config.bind == "0.0.0.0"


def test_flag_given_as_none_does_not_override() -> None:
    # argparse reports an absent option as None; it must not erase a lower layer.
    config = load_config(
        DATA, environ={"EDGEBOX_PORT_OFFSET": "200"}, flags={"port_offset": None, "role": None}
    )

    assert config.port_offset == 200
    assert config.role == "edge"


def test_environment_values_are_coerced() -> None:
    config = load_config(
        DATA,
        environ={
            "EDGEBOX_MAX_MESSAGE_SIZE": "1048576",
            "EDGEBOX_IDLE_TIMEOUT": "2.5",
            "EDGEBOX_HOSTNAME": "mail.test.go.th",
            "EDGEBOX_ROLE": "hub",
        },
    )

    assert config.max_message_size == 1048576
    assert config.idle_timeout == 2.5
    assert config.hostname == "mail.test.go.th"
    assert config.role == "hub"


def test_other_environment_variables_are_ignored() -> None:
    config = load_config(
        DATA,
        environ={"PATH": "/usr/bin", "EDGEBOX": "1", "EDGEBOX_DATA": "/elsewhere", "HOME": "/"},
    )

    assert config == Config(data_dir=DATA)


@pytest.mark.parametrize(
    ("service", "port"),
    [("smtp-mx", 2525), ("smtp-submission", 2587), ("imap", 2143), ("https", 8443)],
)
def test_port_without_offset(service: str, port: int) -> None:
    assert load_config(DATA).port(service) == port


def test_port_with_offset_from_environment() -> None:
    config = load_config(DATA, environ={"EDGEBOX_PORT_OFFSET": "100"})

    assert config.port("smtp-mx") == 2625
    assert config.port("hub-sync") == 7543
    assert {name: config.port(name) for name in DEV_PORTS} == {
        name: port + 100 for name, port in DEV_PORTS.items()
    }


def test_the_box_profile_uses_the_standard_ports() -> None:
    # DESIGN.md "Roles and ports": the image sets EDGEBOX_PORTS=box.
    config = load_config(DATA, environ={"EDGEBOX_PORTS": "box"})

    assert {name: config.port(name) for name in BOX_PORTS} == {
        "smtp-mx": 25, "smtp-submission": 587, "smtp-submissions": 465, "imap": 143,
        "imaps": 993, "https": 443, "hub-sync": 7443, "metrics": 7464,
    }  # fmt: skip
    assert set(BOX_PORTS) == set(DEV_PORTS)
    # Development and tests stay on the unprivileged set unless asked.
    assert load_config(DATA).port("smtp-mx") == 2525


def test_an_unknown_port_profile_is_refused() -> None:
    with pytest.raises(ConfigError, match="ports must be dev or box, not 'prod'"):
        load_config(DATA, file_values={"ports": "prod"})


def test_the_offset_range_follows_the_profile() -> None:
    # 25 - 25 = 0 is not a port; the dev set would allow an offset of -25.
    assert load_config(DATA, flags={"port_offset": -25}).port("smtp-mx") == 2500
    with pytest.raises(ConfigError, match="outside 1-65535"):
        load_config(DATA, environ={"EDGEBOX_PORTS": "box"}, flags={"port_offset": -25})


def test_unknown_service_has_no_port() -> None:
    with pytest.raises(KeyError):
        load_config(DATA).port("gopher")


@pytest.mark.parametrize("text", ["1", "true", "TRUE", "True", "yes", "Yes", "on", "ON"])
def test_true_words(text: str) -> None:
    config = load_config(DATA, environ={"EDGEBOX_MX_REQUIRE_TLS": text})
    assert config.mx_require_tls is True


@pytest.mark.parametrize("text", ["0", "false", "FALSE", "no", "No", "off", "OFF"])
def test_false_words(text: str) -> None:
    config = load_config(
        DATA, file_values={"mx_require_tls": True}, environ={"EDGEBOX_MX_REQUIRE_TLS": text}
    )
    assert config.mx_require_tls is False


@pytest.mark.parametrize("text", ["", "maybe", "2", "enabled", "y es"])
def test_bad_bool_word_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="mx_require_tls"):
        load_config(DATA, environ={"EDGEBOX_MX_REQUIRE_TLS": text})


def test_json_bools_in_the_file() -> None:
    assert load_config(DATA, file_values={"mx_require_tls": True}).mx_require_tls is True
    assert load_config(DATA, file_values={"mx_require_tls": False}).mx_require_tls is False
    assert load_config(DATA, file_values={"mx_require_tls": "on"}).mx_require_tls is True


def test_unknown_key_in_file_is_refused() -> None:
    with pytest.raises(ConfigError, match="port_ofset"):
        load_config(DATA, file_values={"port_ofset": 100})


def test_data_dir_cannot_come_from_the_file() -> None:
    with pytest.raises(ConfigError, match="data_dir"):
        load_config(DATA, file_values={"data_dir": "/tmp/elsewhere"})


def test_unknown_environment_variable_is_refused() -> None:
    with pytest.raises(ConfigError, match="EDGEBOX_PORT_OFSET"):
        load_config(DATA, environ={"EDGEBOX_PORT_OFSET": "100"})


@pytest.mark.parametrize(
    ("layer", "values"),
    [
        ("file_values", {"port_offset": "abc"}),
        ("file_values", {"max_recipients": None}),
        ("file_values", {"idle_timeout": "slow"}),
        ("file_values", {"max_message_size": [1, 2]}),
        ("environ", {"EDGEBOX_PORT_OFFSET": "1.5"}),
        ("environ", {"EDGEBOX_MAX_CONNECTIONS": "many"}),
        ("environ", {"EDGEBOX_IDLE_TIMEOUT": ""}),
        ("flags", {"port_offset": "x"}),
    ],
)
def test_bad_type_is_refused(layer: str, values: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        load_config(DATA, **{layer: values})


@pytest.mark.parametrize(
    "values", [{"port_offset": 1.5}, {"port_offset": True}, {"hostname": ["a"]}]
)
def test_wrong_json_type_in_file_is_refused(values: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        load_config(DATA, file_values=values)


@pytest.mark.parametrize(
    ("layer", "values"),
    [
        ("file_values", {"role": "central"}),
        ("file_values", {"role": "HUB"}),
        ("environ", {"EDGEBOX_ROLE": ""}),
        ("flags", {"role": "peer"}),
    ],
)
def test_bad_role_is_refused(layer: str, values: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="role"):
        load_config(DATA, **{layer: values})


def test_a_bad_role_in_a_lower_layer_is_fine_if_overridden() -> None:
    config = load_config(DATA, file_values={"role": "hub"}, flags={"role": "edge"})
    assert config.role == "edge"


@pytest.mark.parametrize("offset", [57092, 0, -2142])
def test_port_offsets_that_keep_every_port_valid(offset: int) -> None:
    config = load_config(DATA, flags={"port_offset": offset})
    assert all(1 <= config.port(service) <= 65535 for service in DEV_PORTS)


@pytest.mark.parametrize(
    ("layer", "values"),
    [
        ("flags", {"port_offset": 60000}),
        ("flags", {"port_offset": 57093}),
        ("environ", {"EDGEBOX_PORT_OFFSET": "-2143"}),
        ("file_values", {"port_offset": 70000}),
    ],
)
def test_port_offset_past_the_port_range_is_refused(layer: str, values: dict[str, Any]) -> None:
    # A port past 65535 would otherwise wrap around: 60000 put HTTPS on 2907.
    with pytest.raises(ConfigError, match="outside 1-65535"):
        load_config(DATA, **{layer: values})


def test_mx_trusted_relays_must_be_addresses(tmp_path: Path) -> None:
    config = load_config(tmp_path, file_values={"mx_trusted_relays": "10.0.0.5, 10.1.0.0/16"})
    assert config.mx_trusted_relays == "10.0.0.5, 10.1.0.0/16"
    with pytest.raises(ConfigError, match="'hub' is not an IP address"):
        load_config(tmp_path, environ={"EDGEBOX_MX_TRUSTED_RELAYS": "10.0.0.5 hub"})


def test_hub_admission_bounds_must_admit_something(tmp_path: Path) -> None:
    config = load_config(tmp_path, flags={"hub_requests": "16", "hub_queue_wait": "7.5"})
    assert (config.hub_requests, config.hub_box_requests, config.hub_queue_wait) == (16, 2, 7.5)
    for name, value in (("hub_requests", "0"), ("hub_box_requests", "0"), ("hub_queue", "0")):
        with pytest.raises(ConfigError, match=f"{name} must be at least 1"):
            load_config(tmp_path, flags={name: value})
    with pytest.raises(ConfigError, match="hub_queue_wait"):
        load_config(tmp_path, flags={"hub_queue_wait": "0"})


def test_smtp_workers_is_at_least_one(tmp_path: Path) -> None:
    config = load_config(tmp_path, environ={"EDGEBOX_SMTP_WORKERS": "2"})
    assert config.smtp_workers == 2
    with pytest.raises(ConfigError, match="smtp_workers must be at least 1"):
        load_config(tmp_path, flags={"smtp_workers": "0"})
