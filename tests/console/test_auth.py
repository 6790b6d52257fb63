"""Users files, token hashes and signed sessions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from otel_audit.console.auth import SessionCodec, UserDirectory, hash_token, load_users
from otel_audit.errors import ConfigError


def test_users_from_toml_and_json(tmp_path: Path) -> None:
    digest = hash_token("s3cret").removeprefix("sha256:")
    toml = tmp_path / "users.toml"
    toml.write_text(f'[[users]]\nname = "alice"\nrole = "auditor"\nteams = ["a"]\n'
                    f'token_sha256 = "{digest}"\n')
    (user,) = load_users(toml)
    assert (user.name, user.role, user.teams) == ("alice", "auditor", ("a",))
    assert UserDirectory([user]).by_token("s3cret") == user
    assert UserDirectory([user]).by_token("wrong") is None
    text = json.dumps([{"name": "bob", "role": "admin", "teams": "*",
                        "token_sha256": "sha256:" + digest}])
    (bob,) = load_users(text)  # JSON text, as OTEL_AUDIT_CONSOLE_USERS may hold
    assert bob.role == "admin" and bob.teams == ("*",)


@pytest.mark.parametrize("entry, message", [
    ({"role": "auditor"}, "needs a name"),
    ({"name": "x", "role": "root"}, "role must be"),
    ({"name": "x", "token_sha256": "abc"}, "64 hex"),
    ({"name": "x", "teams": [1]}, "teams must be"),
])
def test_bad_users_are_clear_errors(entry: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_users(json.dumps([entry]))


def test_duplicate_names_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unique"):
        load_users(json.dumps([{"name": "a"}, {"name": "a"}]))
    with pytest.raises(ConfigError, match="cannot read"):
        load_users(tmp_path / "nope.toml")


def test_sessions_are_signed() -> None:
    codec = SessionCodec("k1")
    value, csrf = codec.dump("alice")
    assert codec.load(value) == ("alice", csrf)
    assert SessionCodec("k2").load(value) is None  # another key: not ours
    assert codec.load(value[:-2] + "xx") is None
    assert codec.load("garbage") is None
