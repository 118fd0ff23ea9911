"""The ``nmstream`` command: settings errors, a module that fails to import, and ``nmstream
dev`` as ``make run`` uses it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from nmstream.broker import free_port, port_open
from tests.helpers import EXAMPLES, FAST_GROUP, payload, usable


def test_bad_setting_is_a_clear_message_not_a_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nmstream", "worker"],
        env={**os.environ, "NMSTREAM_WEB_PORT": "not-a-port"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "NMSTREAM_WEB_PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_module_that_fails_to_import_stops_the_worker(tmp_path: Path) -> None:
    """Faust's autodiscovery would log it and serve without the module (here: no ingest
    view, so Alertmanager's posts answered 404)."""
    broken = (
        "import importlib.abc, sys\n"
        "class Broken(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'nmstream.ingest.views':\n"
        "            raise ImportError('broken on purpose')\n"
        "sys.meta_path.insert(0, Broken())\n"
        "sys.argv = ['nmstream', 'worker']\n"
        "from nmstream.cli import main\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", broken],
        env={**os.environ, "NMSTREAM_WEB_PORT": str(free_port()),
             "NMSTREAM_BROKER": f"kafka://127.0.0.1:{free_port()}",
             "NMSTREAM_DATA_DIR": str(tmp_path / "data")},
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "broken on purpose" in result.stdout + result.stderr


def test_missing_config_dir_is_a_clear_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nmstream", "worker", "--config-dir", str(tmp_path / "nope")],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "--config-dir" in result.stderr and "not a directory" in result.stderr


def test_dev_runs_broker_and_worker_and_ctrl_c_stops_both(tmp_path: Path) -> None:
    web_port = free_port()
    env = {
        **os.environ,
        **FAST_GROUP,
        "NMSTREAM_DEV_BROKER_PORT": "0",
        "NMSTREAM_WEB_PORT": str(web_port),
        "NMSTREAM_TOPIC_PREFIX": "devtest",
    }
    log_path = tmp_path / "dev.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "nmstream", "dev", "--config-dir", str(EXAMPLES), "-l", "info"],
            env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{web_port}"
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            try:
                if requests.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
        response = requests.post(f"{url}/api/v2/alerts", data=payload("alert.json"), timeout=30)
        assert response.status_code == 200
        assert response.json()["alerts"] == 9
        while not usable(requests.get(f"{url}/api/v2/receivers", timeout=5).json(), 4):
            assert time.monotonic() < deadline + 30, log_path.read_text()
            time.sleep(0.2)

        match = re.search(r"embedded broker on 127\.0\.0\.1:(\d+)", log_path.read_text())
        assert match, log_path.read_text()
        broker_port = int(match.group(1))
        assert port_open(broker_port)

        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0, log_path.read_text()
        assert not port_open(broker_port), "embedded broker still running after Ctrl-C"
        assert not port_open(web_port)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
