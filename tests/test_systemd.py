"""The shipped systemd unit and install steps leave the config folder writable by the service
user (issue [6]: under User=smartproxy every admin write failed with Permission denied)."""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "smartproxy.service"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_the_config_folder_is_owned_by_the_service_user() -> None:
    service = unit()["Service"]
    user = service["User"]
    assert "ConfigurationDirectory" not in service  # systemd leaves that one owned by root
    assert "/etc/smartproxy" in service["ReadWritePaths"].split()
    for text in (UNIT.read_text(), (ROOT / "README.md").read_text()):
        assert f"install -d -m 0750 -o {user} -g {user} /etc/smartproxy" in text
        assert f"-o {user} -g {user} etc/smartproxy.yaml /etc/smartproxy/smartproxy.yaml" in text


def test_state_and_umask() -> None:
    service = unit()["Service"]
    assert service["StateDirectory"] == "smartproxy"
    assert service["UMask"] == "0027"
    assert service["Environment"].endswith("/etc/smartproxy/smartproxy.yaml")


def test_a_filtered_system_call_fails_instead_of_killing_the_gateway() -> None:
    service = unit()["Service"]
    assert "@privileged" in service["SystemCallFilter"]  # the last line of it is what parses
    assert service["SystemCallErrorNumber"] == "EPERM"
