"""Read-modify-write of the config file: what is kept, what is validated, how it is written."""

from __future__ import annotations

import difflib
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import fresh_python

from smartproxy.config import ConfigError, default_config_text, load_config
from smartproxy.config import file as cf
from smartproxy.config.kinds import API_KEYS, CHANNELS, RULES

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent

FILE = """\
# Team gateway — comments must survive admin edits.
server:
  listen: "127.0.0.1:8080"   # behind nginx
  timezone: "UTC"

channels:
  - name: "groq"              # free tier
    type: "openai"
    endpoint: "${GROQ_URL:-https://api.groq.com/openai/v1}"
    api_key: "${GROQ_KEY}"    # from the environment
    price_per_token: 0
    daily_limit: 500000
  - name: "paid"
    type: "openai"
    endpoint: "https://api.openai.com/v1"
    api_key: "sk-paid-plain-key-0123456789"
    price_per_token: 0.0000006
    headers: {"OpenAI-Organization": "org-0123456789abcdef"}

  # - name: "later"  (a commented-out sample stays at the end of the list)

rules:
  - name: "free first"
    channel: "groq"
    expression: "day_tokens_used < daily_limit && true"

security:
  auth:
    api_keys:
      team-a: "sk-team-a-0123456789abc"   # plain
      ci: {key: "sha256:%s", requests_per_minute: 30}
storage: {backend: memory}
""" % ("ab" * 32)


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROQ_KEY", "gsk-from-env-secret-9876")


def changed_lines(before: str, after: str) -> tuple[list[str], list[str]]:
    """(removed, added) lines, as a line diff shows them."""
    diff = list(difflib.ndiff(before.splitlines(), after.splitlines()))
    return [d[2:] for d in diff if d[:2] == "- "], [d[2:] for d in diff if d[:2] == "+ "]


def test_the_app_loads_without_ruamel_until_the_file_is_edited() -> None:
    """ruamel.yaml (~2 MB per process) is imported by the first edit of the file, not with the
    config and the app: a worker that never serves an admin write does not hold it."""
    assert fresh_python(
        "import sys",
        "from smartproxy.app import create_app",
        "from smartproxy.config import parse_config",
        "from smartproxy.config import file as cf",
        "from smartproxy.config.kinds import CHANNELS",
        "create_app(parse_config({}))",
        "print('ruamel.yaml' in sys.modules)",
        "text = 'channels: []  # kept\\n'",
        "edit = cf.upsert(text, CHANNELS, {'name': 'extra', 'type': 'mock'})",
        "print('ruamel.yaml' in sys.modules, '# kept' in edit.text, 'extra' in edit.text)",
    ) == ["False", "True True True"]


@pytest.mark.parametrize(
    "path",
    [DATA / "go-configs-config.yaml", DATA / "dotnet-smartaiproxy.yaml",
     ROOT / "etc" / "smartproxy.yaml"],
    ids=lambda p: p.name,
)
def test_get_then_post_back_changes_nothing(path: Path) -> None:
    """Every entry, shown masked as GET shows it and posted back as is, leaves the file as is."""
    text = path.read_text(encoding="utf-8")
    config = load_config(path)
    for kind in (CHANNELS, RULES, API_KEYS):
        for obj in kind.items(config):
            edit = cf.upsert(text, kind, kind.view(obj), source=str(path))
            assert edit.text == text, (kind.name, obj.name)
            assert not edit.created and not edit.changed


def test_env_references_survive_an_edit_of_another_field() -> None:
    config = cf.current_config(FILE, None)[1]
    groq = CHANNELS.view(CHANNELS.get(config, "groq"))
    assert groq["api_key"] == "...9876" and groq["endpoint"].startswith("https://api.groq")
    groq["daily_limit"] = 1000  # the admin edits one field of what GET showed
    edit = cf.upsert(FILE, CHANNELS, groq)
    removed, added = changed_lines(FILE, edit.text)
    assert removed == ["    daily_limit: 500000"] and added == ["    daily_limit: 1000"]
    assert "gsk-from-env-secret-9876" not in edit.text
    assert edit.changed == {"daily_limit"}
    assert CHANNELS.get(edit.config, "groq").api_key == "gsk-from-env-secret-9876"


@pytest.mark.parametrize("sent", [None, "omit", "...9876"])
def test_secret_left_out_or_masked_keeps_the_stored_one(sent: str | None) -> None:
    body = {"name": "groq", "type": "openai", "endpoint": "https://api.groq.com/openai/v1",
            "daily_limit": 500000}
    if sent != "omit":
        body["api_key"] = sent
    edit = cf.upsert(FILE, CHANNELS, body)
    assert 'api_key: "${GROQ_KEY}"    # from the environment' in edit.text
    assert edit.changed == frozenset({"price_per_token"}) or edit.changed == frozenset()


def test_new_secret_and_new_values_are_written_so_pyyaml_reads_them_back() -> None:
    body = {"name": "paid", "type": "openai", "endpoint": "https://api.openai.com/v1",
            "api_key": "sk-new-key-0000000000", "price_per_token": 6e-07,
            "models": ["on", "gpt-4o"], "model_mapping": {"yes": "no"}}
    edit = cf.upsert(FILE, CHANNELS, body)
    assert "price_per_token: 0.0000006" in edit.text  # not 6e-07, which PyYAML reads as a string
    assert 'models: ["on", "gpt-4o"]' in edit.text
    doc = yaml.safe_load(edit.text)
    paid = doc["channels"][1]
    assert paid["models"] == ["on", "gpt-4o"] and paid["model_mapping"] == {"yes": "no"}
    assert paid["api_key"] == "sk-new-key-0000000000"
    ch = CHANNELS.get(edit.config, "paid")
    assert ch.price_per_token == 6e-07 and ch.upstream_model("yes") == "no"


def test_comments_and_other_sections_are_kept_on_add_and_delete() -> None:
    body = {"name": "extra", "type": "mock", "price_per_token": 0}
    added = cf.upsert(FILE, CHANNELS, body)
    assert added.created
    removed_lines, new_lines = changed_lines(FILE, added.text)
    assert removed_lines == []
    assert new_lines == ['  - name: "extra"', '    type: "mock"', "    price_per_token: 0"]
    # the commented-out sample stays after the last entry
    assert added.text.index('name: "extra"') < added.text.index('# - name: "later"')
    back = cf.remove(added.text, CHANNELS, "extra")
    assert back.text == FILE


def test_a_channel_named_by_rules_cannot_be_deleted() -> None:
    with pytest.raises(cf.EntryInUse, match="'free first'"):
        cf.remove(FILE, CHANNELS, "groq")
    with pytest.raises(cf.EntryNotFound):
        cf.remove(FILE, RULES, "nope")
    text = cf.remove(FILE, RULES, "free first").text
    assert "groq" not in [r.channel for r in load_from(text).rules]
    text = cf.remove(text, CHANNELS, "groq").text
    assert "groq" not in [c.name for c in load_from(text).channels]


def load_from(text: str):  # type: ignore[no-untyped-def]
    return cf.current_config(text, None)[1]


@pytest.mark.parametrize(
    ("kind", "body", "problem"),
    [
        (CHANNELS, {"name": "x", "type": "openai"}, "channels[2].endpoint: is required"),
        (CHANNELS, {"name": "x", "type": "gemini", "endpoint": "https://x/v1"},
         "channels[2].type: must be one of"),
        (CHANNELS, {"name": "x", "type": "openai", "endpoint": "ftp://x"},
         "channels[2].endpoint: not a URL"),
        (CHANNELS, {"name": "x", "type": "mock", "colour": "red"},
         "channels[2].colour: unknown key"),
        (RULES, {"name": "r", "channel": "groq", "expression": "__import__('os')"},
         "rules[1].expression:"),
        (RULES, {"name": "r", "channel": "ghost", "expression": "true"},
         "rules[1].channel: no channel named 'ghost'"),
        (API_KEYS, {"name": "k", "key": "sha256:zz"}, "security.auth.api_keys.k: sha256:"),
        (API_KEYS, {"name": "k", "key": "sk-k-0123456789", "burst": -1},
         "security.auth.api_keys.k.burst: must not be negative"),
    ],
)
def test_invalid_entries_are_refused_with_the_loaders_path(kind, body, problem) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as info:
        cf.upsert(FILE, kind, body)
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems


def test_api_key_forms() -> None:
    # a bare key gains options: it becomes a mapping, the key keeping its text and comment
    edit = cf.upsert(FILE, API_KEYS, {"name": "team-a", "key": "sk-...9abc", "burst": 3})
    team_a = yaml.safe_load(edit.text)["security"]["auth"]["api_keys"]["team-a"]
    assert team_a == {"key": "sk-team-a-0123456789abc", "burst": 3}
    # the mapping form is edited in place; a new key is added in the file's form
    edit = cf.upsert(edit.text, API_KEYS, {"name": "ci", "requests_per_minute": 5})
    edit = cf.upsert(edit.text, API_KEYS, {"name": "new", "key": "sk-new-0123456789"})
    keys = yaml.safe_load(edit.text)["security"]["auth"]["api_keys"]
    assert keys["ci"] == {"key": "sha256:" + "ab" * 32, "requests_per_minute": 5}
    assert keys["new"] == "sk-new-0123456789"
    assert API_KEYS.view(API_KEYS.get(edit.config, "ci"))["key"] == "sha256:...abab"
    # the list form
    text = 'security: {auth: {api_keys: [{name: a, key: "sk-a-0123456789"}]}}\n'
    edit = cf.upsert(text, API_KEYS, {"name": "b", "key": "sk-b-0123456789"})
    assert [k.name for k in edit.config.security.api_keys] == ["a", "b"]
    assert [k.name for k in cf.remove(edit.text, API_KEYS, "a").config.security.api_keys] == ["b"]
    # no security section at all
    edit = cf.upsert("channels: []\n", API_KEYS, {"name": "only", "key": "sk-only-0123456789"})
    assert edit.config.security.api_keys[0].name == "only"


def test_the_files_indentation_is_used_for_new_entries() -> None:
    text = "channels:\n    -   name: a\n        type: mock\n"
    edit = cf.upsert(text, CHANNELS, {"name": "b", "type": "mock"})
    assert edit.text == text + '    -   name: "b"\n        type: "mock"\n'


def test_a_file_that_does_not_load_refuses_every_edit() -> None:
    broken = FILE.replace('endpoint: "https://api.openai.com/v1"', 'endpoint: "nope"')
    with pytest.raises(cf.FileInvalid, match=r"channels\[1\].endpoint"):
        cf.upsert(broken, CHANNELS, {"name": "x", "type": "mock"})


def test_atomic_write_keeps_mode_and_goes_through_symlinks(tmp_path: Path) -> None:
    real = tmp_path / "real.yaml"
    real.write_text("channels: []\n")
    os.chmod(real, 0o640)
    link = tmp_path / "smartproxy.yaml"
    link.symlink_to(real)
    f = cf.ConfigFile(str(link))
    f.write("rules: []\n", expected=f.read())
    assert link.is_symlink() and real.read_text() == "rules: []\n"
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real.yaml", "smartproxy.yaml"]
    # someone edited the file after it was read: nothing is written
    with pytest.raises(cf.FileChanged):
        f.write("x: 1\n", expected="channels: []\n")
    assert real.read_text() == "rules: []\n"
    missing = cf.ConfigFile(str(tmp_path / "gone" / "c.yaml"))
    with pytest.raises(cf.CannotWrite, match="cannot read"):
        missing.read()


def test_without_a_file_edits_live_in_memory() -> None:
    f = cf.ConfigFile(None)
    assert not f.saved and f.read() == default_config_text()
    f.write("channels: []\n", expected=f.read())
    assert f.read() == "channels: []\n"
    f.reset()
    assert f.read() == default_config_text()


def test_a_masked_value_that_is_not_the_stored_ones_mask_is_refused() -> None:
    body = {"name": "paid", "type": "openai", "endpoint": "https://api.openai.com/v1",
            "api_key": "...9876"}  # the mask of another channel's key
    with pytest.raises(ConfigError, match="api_key: '...9876' is a masked value"):
        cf.upsert(FILE, CHANNELS, body)
    with pytest.raises(ConfigError, match="key: 'sk-...abcd' is a masked value"):
        cf.upsert(FILE, API_KEYS, {"name": "new", "key": "sk-...abcd"})


def test_masked_headers_round_trip_and_a_changed_header_is_written() -> None:
    paid = CHANNELS.view(CHANNELS.get(cf.current_config(FILE, None)[1], "paid"))
    assert paid["headers"] == {"OpenAI-Organization": "...cdef"}
    assert cf.upsert(FILE, CHANNELS, paid).text == FILE
    paid["headers"]["X-Team"] = "blue"
    edit = cf.upsert(FILE, CHANNELS, paid)
    assert CHANNELS.get(edit.config, "paid").headers == {
        "OpenAI-Organization": "org-0123456789abcdef", "X-Team": "blue"}
    assert CHANNELS.diff(CHANNELS.get(cf.current_config(FILE, None)[1], "paid"),
                         CHANNELS.get(edit.config, "paid")) == {
        "headers": {"old": {"OpenAI-Organization": "...cdef"},
                    "new": {"OpenAI-Organization": "...cdef", "X-Team": "****"}}}


def test_writing_its_own_file_makes_no_chown_call(tmp_path: Path, monkeypatch: Any) -> None:
    """The shipped unit filters chown out (``SystemCallFilter=~@privileged``): a gateway
    writing a file it owns must not call it (every admin write killed the process with SIGSYS,
    audit finding)."""
    calls: list[Any] = []
    monkeypatch.setattr(os, "chown", lambda *a: calls.append(a))
    path = tmp_path / "smartproxy.yaml"
    path.write_text("channels: []\n")
    f = cf.ConfigFile(str(path))
    f.write("rules: []\n", expected=f.read())
    assert path.read_text() == "rules: []\n" and calls == []
