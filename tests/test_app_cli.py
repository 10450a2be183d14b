"""``bioclip-app`` on a port that another program listens on: it says so, suggests a free port,
and starts nothing."""

from __future__ import annotations

import socket

from click.testing import CliRunner

from indexer.cli import app as app_cli


def test_a_port_in_use_is_refused_with_a_free_one_suggested(tmp_path, tiny_model_dir):
    from bioclip import load_model
    from indexer.store import Collection

    model = load_model(f"local-dir:{tiny_model_dir}", device="cpu")
    Collection.create(tmp_path / "c.coll", model.describe(), dimension=model.dimension)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(app_cli.main, [str(tmp_path / "c.coll"), "--port", str(port)])
    assert result.exit_code != 0
    assert f"port {port} on 127.0.0.1 is taken" in result.output and "try --port " in result.output
    suggested = int(result.output.split("try --port ")[1].split()[0])
    assert suggested > port
    assert "bioclip-search app on http" not in result.output  # no URL that would not answer
    with socket.socket() as s:  # the suggestion was free when it was made
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", suggested))


def test_a_free_port_passes_the_check():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app_cli.check_port("127.0.0.1", port)  # raises nothing
