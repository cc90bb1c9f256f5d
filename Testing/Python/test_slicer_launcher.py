"""The local engine launcher, with real processes: a small stand-in engine script serves HTTP on loopback.

The stand-in plays `medals serve`: it binds a free loopback port, prints the ready line, and answers only
requests that carry the token it was given in its environment. PyTorch Utils and Slicer's pip exist only
inside Slicer, so `SlicerPythonSetup` is tested with stand-ins for those two (a fake pip that writes a real
package onto sys.path).
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
from MedalSLib.launcher import (READY_MARKER, TOKEN_VARIABLE, LocalEngine, SlicerPythonSetup, engine_command,
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


class StandInTorchUtils:
    """PyTorch Utils' logic as far as the setup uses it (the real one exists only inside Slicer)."""

    def __init__(self, installed: bool, installs: bool = True):
        self.installed, self.installs, self.calls = installed, installs, []

    def torchInstalled(self):
        return self.installed

    def installTorch(self, askConfirmation, torchVersionRequirement=None):
        self.calls.append(("installTorch", askConfirmation, torchVersionRequirement))
        self.installed = self.installs
        return object() if self.installs else None


@pytest.fixture
def package_dir(tmp_path, monkeypatch):
    """A folder on sys.path where the stand-in pip 'installs' packages."""
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def setup_for(package_dir, name: str, torch_utils, answer: bool = True, pip_creates: bool = True):
    events = []

    def ask(message):
        events.append(("ask", message))
        return answer

    def pip_install(requirement):
        events.append(("pip", requirement))
        if pip_creates:
            (package_dir / name).mkdir()
            (package_dir / name / "__init__.py").write_text("")

    return SlicerPythonSetup(ask, torch_utils, pip_install, engine_requirement=f"{name}==0.1",
                             engine_module=name), events


def test_setup_does_nothing_when_the_engine_is_importable(package_dir):
    setup, events = setup_for(package_dir, "medals_setup_present", StandInTorchUtils(installed=True))
    (package_dir / "medals_setup_present").mkdir()
    (package_dir / "medals_setup_present" / "__init__.py").write_text("")
    setup.ensure_engine()
    assert events == []


def test_setup_installs_torch_first_then_the_engine_after_consent(package_dir):
    torch_utils = StandInTorchUtils(installed=False)
    setup, events = setup_for(package_dir, "medals_setup_fresh", torch_utils)
    setup.ensure_engine()
    assert events[0][0] == "ask" and "PyTorch" in events[0][1]
    assert torch_utils.calls == [("installTorch", False, ">=2.2")]
    assert events[1] == ("pip", "medals_setup_fresh==0.1")
    assert setup.engine_installed()


def test_setup_installs_nothing_when_declined(package_dir):
    torch_utils = StandInTorchUtils(installed=False)
    setup, events = setup_for(package_dir, "medals_setup_declined", torch_utils, answer=False)
    with pytest.raises(EngineStartError, match="declined"):
        setup.ensure_engine()
    assert torch_utils.calls == [] and [kind for kind, _ in events] == ["ask"]


def test_setup_stops_when_pytorch_utils_installs_nothing(package_dir):
    setup, events = setup_for(package_dir, "medals_setup_no_torch", StandInTorchUtils(installed=False, installs=False))
    with pytest.raises(EngineStartError, match="PyTorch Utils did not install PyTorch"):
        setup.ensure_engine()
    assert [kind for kind, _ in events] == ["ask"]


def test_setup_reports_an_engine_that_pip_did_not_make_importable(package_dir):
    setup, _ = setup_for(package_dir, "medals_setup_broken", StandInTorchUtils(installed=True), pip_creates=False)
    with pytest.raises(EngineStartError, match="cannot find the 'medals_setup_broken' package"):
        setup.ensure_engine()
