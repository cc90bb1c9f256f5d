"""`medals serve --exit-with-parent`: the server ends once its stdin closes, as it does when its parent dies."""
from __future__ import annotations

import subprocess
import time

from server_fixtures import client, medals_home, server_process, wait_until  # noqa: F401


def test_closing_stdin_shuts_the_server_down_cleanly_within_seconds(medals_home):  # noqa: F811
    with server_process(medals_home, "--exit-with-parent", stdin=subprocess.PIPE) as server:
        assert client.EngineClient(server.url).health()["protocol"] == 1
        closed = time.monotonic()
        server.process.stdin.close()
        assert server.process.wait(timeout=15) == 0
        assert time.monotonic() - closed < 5
        wait_until(lambda: any("stdin closed" in line for line in server.lines), timeout=5)
