"""The public names of phpo.client are pinned: removing or renaming one breaks users' code."""

from __future__ import annotations

import phpo.client as client


def test_all_is_pinned():
    assert sorted(client.__all__) == [
        "APIError",
        "AuthError",
        "Client",
        "ClientConfig",
        "ConfigError",
        "Conflict",
        "InvalidInput",
        "NotFound",
        "PhpoError",
        "SandboxTooLarge",
        "ServerUnreachable",
        "Table",
        "build_sandbox",
        "config_path",
        "load_config",
        "sandbox_files",
        "save_config",
        "validate_spec",
    ]
    for name in client.__all__:
        assert getattr(client, name) is not None


def test_errors_form_one_hierarchy():
    for name in (
        "APIError",
        "AuthError",
        "ConfigError",
        "Conflict",
        "InvalidInput",
        "NotFound",
        "ServerUnreachable",
        "SandboxTooLarge",
    ):
        assert issubclass(getattr(client, name), client.PhpoError), name


def test_client_without_configuration_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("PHPO_URL", raising=False)
    monkeypatch.delenv("PHPO_TOKEN", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    try:
        client.Client()
    except client.ConfigError as e:
        assert "PHPO_URL" in str(e) and "phpo up" in str(e)
    else:  # pragma: no cover
        raise AssertionError("a client with no server configured must refuse to start")


def test_client_reads_the_config_file_phpo_up_writes(tmp_path, monkeypatch):
    monkeypatch.delenv("PHPO_URL", raising=False)
    monkeypatch.delenv("PHPO_TOKEN", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    path = client.save_config("http://127.0.0.1:9/", "tok-123")
    assert path == tmp_path / "phpo" / "config.toml"
    with client.Client() as c:
        assert c.url == "http://127.0.0.1:9"
        assert c.token == "tok-123"
    # an explicit argument wins over the file
    with client.Client(url="http://127.0.0.1:10") as c:
        assert c.url == "http://127.0.0.1:10" and c.token == "tok-123"


def test_unreachable_server_is_a_clear_error():
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with client.Client(f"http://127.0.0.1:{port}", "t") as c:
        try:
            c.tasks()
        except client.ServerUnreachable as e:
            assert f"127.0.0.1:{port}" in str(e)
        else:  # pragma: no cover
            raise AssertionError("expected ServerUnreachable")
