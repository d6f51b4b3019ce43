"""Starts `falcon-h1 serve` on the server fixture model for the API tests.

Environment: FH1_BIN (the falcon-h1 executable), FH1_MODEL (the model directory).
"""
import os
import re
import signal
import subprocess
import time

import pytest
import requests

BIN = os.environ.get("FH1_BIN", "build/falcon-h1")
MODEL = os.environ.get("FH1_MODEL", "tests/fixtures/server/model")


class Server:
    def __init__(self, *args, log_name="server"):
        self.log_path = os.path.join(os.environ.get("FH1_LOG_DIR", "/tmp"), f"fh1_{log_name}_{os.getpid()}.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([BIN, "serve", "-m", MODEL, "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        m = re.search(r"listening on (http://\S+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r}; log: {open(self.log_path).read()}")
        self.url = m.group(1)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.05)

    def metric(self, name):
        text = requests.get(self.url + "/metrics", timeout=5).text
        m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(m.group(1)) if m else None

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def server():
    s = Server("--parallel", "8", "--queue", "64", "--read-timeout", "2", "--cache-mb", "64",
               log_name="main")
    yield s
    rc = s.stop()
    assert rc == 0, f"server exited with {rc}; log in {s.log_path}"


@pytest.fixture(scope="session")
def client(server):
    import openai
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)


@pytest.fixture(scope="session")
def model_name(client):
    return client.models.list().data[0].id
