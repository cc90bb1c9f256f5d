"""The local engine launcher, with real processes: a small stand-in engine script serves HTTP on loopback.

The stand-in plays `medals serve`: it binds a free loopback port, prints the ready line, and answers only
requests that carry the token it was given in its environment. Installing the engine into Slicer's Python
(`SlicerPythonSetup`) is tested in test_slicer_engine_setup.py.
"""
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from slicer_fixtures import MODULE_DIR  # noqa: F401  (puts MedalSLib on sys.path)

from MedalSLib.errors import EngineStartError
from MedalSLib.launcher import (PRECISIONS, READY_MARKER, TOKEN_VARIABLE, LocalEngine, device_choice, engine_command,
                                engine_version)

STAND_IN_ENGINE = textwrap.dedent(f"""
    import http.server, os, signal, sys
    if "--ignore-terminate" in sys.argv:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    token = os.environ["{TOKEN_VARIABLE}"]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.headers.get("Authorization") == "Bearer " + token
            self.send_response(200 if ok else 401)
            self.end_headers()
            self.wfile.write(b"engine" if ok else b"no")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    print("loading model ...", flush=True)
    print("{READY_MARKER} http://127.0.0.1:%d" % server.server_address[1], flush=True)
    server.serve_forever()
""")


@pytest.fixture
def stand_in(tmp_path) -> Path:
    script = tmp_path / "stand_in_engine.py"
    script.write_text(STAND_IN_ENGINE)
    return script


def script_engine(tmp_path, body: str, **kwargs) -> LocalEngine:
    script = tmp_path / "engine.py"
    script.write_text(textwrap.dedent(body))
    return LocalEngine([sys.executable, str(script)], **kwargs)


def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_engine_command_serves_on_a_free_loopback_port():
    command = engine_command("/opt/python", device="cuda:1", model="official")
    assert command[:3] == ["/opt/python", "-m", "medals.cli"]
    assert command[3:9] == ["serve", "--host", "127.0.0.1", "--port", "0", "--exit-with-parent"]
    assert command[9:] == ["--device", "cuda:1", "--model", "official"]


def test_device_field_gives_device_and_precision():
    assert device_choice("auto") == (None, None) and device_choice(" ") == (None, None)
    assert device_choice("cuda:1") == ("cuda:1", None)
    assert device_choice("cpu bf16") == ("cpu", "bf16") and device_choice("bf16") == (None, "bf16")
    assert engine_command("/opt/python", "cpu", precision="bf16")[9:] == ["--device", "cpu", "--precision", "bf16"]


def test_device_field_precisions_are_the_engines():
    from medals.device import PRECISIONS as ENGINE_PRECISIONS

    assert set(PRECISIONS) <= set(ENGINE_PRECISIONS)


def test_started_engine_answers_at_its_url_with_the_token(stand_in):
    engine = LocalEngine([sys.executable, str(stand_in)])
    try:
        url = engine.start()
        assert url.startswith("http://127.0.0.1:")
        assert engine.running
        assert get(url, engine.token) == (200, b"engine")
    finally:
        engine.stop()


def test_engine_refuses_requests_without_its_token(stand_in):
    engine = LocalEngine([sys.executable, str(stand_in)])
    try:
        assert get(engine.start())[0] == 401
    finally:
        engine.stop()


def test_stopped_engine_is_gone_and_its_port_closed(stand_in):
    engine = LocalEngine([sys.executable, str(stand_in)])
    url = engine.start()
    engine.stop()
    assert not engine.running
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)


def test_engine_can_start_again_after_a_stop(stand_in):
    engine = LocalEngine([sys.executable, str(stand_in)])
    try:
        engine.start()
        engine.stop()
        assert get(engine.start(), engine.token)[0] == 200
    finally:
        engine.stop()


def test_stop_kills_an_engine_that_ignores_terminate(stand_in):
    engine = LocalEngine([sys.executable, str(stand_in), "--ignore-terminate"])
    engine.start()
    started = time.monotonic()
    engine.stop(timeout_s=0.5)
    assert not engine.running
    assert time.monotonic() - started < 5


def test_engine_that_exits_early_is_reported_with_its_own_last_words(tmp_path):
    engine = script_engine(tmp_path, """
        import sys
        print("medals: error: no model installed; run `medals weights import` first", flush=True)
        sys.exit(3)
    """)
    with pytest.raises(EngineStartError, match=r"exit code 3.*no model installed"):
        engine.start()


def test_engine_not_ready_in_time_is_stopped(tmp_path):
    engine = script_engine(tmp_path, "import time; print('loading', flush=True); time.sleep(60)",
                           startup_timeout_s=1.0)
    with pytest.raises(EngineStartError, match="not ready within 1 s.*loading"):
        engine.start()
    assert not engine.running


def test_ready_line_for_another_host_is_not_trusted(tmp_path):
    engine = script_engine(tmp_path, f"print('{READY_MARKER} http://10.1.2.3:80', flush=True)")
    with pytest.raises(EngineStartError, match="must listen on loopback"):
        engine.start()


def test_stop_from_another_thread_ends_a_pending_start(tmp_path):
    engine = script_engine(tmp_path, "import time; time.sleep(60)")
    threading.Timer(0.5, engine.stop).start()
    started = time.monotonic()
    with pytest.raises(EngineStartError, match="stopped"):
        engine.start()
    assert time.monotonic() - started < 10


def test_cancelling_a_pending_start_leaves_no_process(tmp_path):
    engine = script_engine(tmp_path, "import time; time.sleep(60)")
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    with pytest.raises(EngineStartError, match="cancelled"):
        engine.start(cancel)
    assert not engine.running


def test_missing_interpreter_is_reported():
    with pytest.raises(EngineStartError, match="cannot run /nonexistent/python"):
        LocalEngine(["/nonexistent/python", "-m", "medals.cli", "serve"]).start()


def test_engine_version_of_an_environment_with_medals():
    import medals
    assert engine_version(sys.executable) == medals.__version__


def test_engine_version_of_an_environment_without_medals_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `python -c` imports from the working directory, which here holds medals/
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    python = tmp_path / "bare" / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    with pytest.raises(EngineStartError, match="cannot import the MedalS engine: .*No module named 'medals'"):
        engine_version(str(python))


def test_engine_version_of_a_missing_interpreter():
    with pytest.raises(EngineStartError, match="no Python interpreter at /nonexistent/python"):
        engine_version("/nonexistent/python")
