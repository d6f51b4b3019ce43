"""The chat page at / loads in headless Chromium and shows a streamed reply.

Chromium is driven through its DevTools protocol (websocket-client): the page is opened with
?prompt=..., which sends the message at once, and the test waits until the page says the reply is
done, then reads what it shows. A screenshot is left in $FH1_LOG_DIR/web_page.png.
"""
import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time

import pytest
import requests

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_page_is_served(server):
    r = requests.get(server.url + "/")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert "/v1/chat/completions" in r.text and "getReader" in r.text


class DevTools:
    def __init__(self, ws_url):
        import websocket
        self.ws = websocket.create_connection(ws_url, timeout=30)
        self.ids = itertools.count(1)

    def call(self, method, **params):
        i = next(self.ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(msg["error"])
                return msg["result"]

    def evaluate(self, expression):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_page_streams_a_reply_in_chromium(server, client, model_name):
    prompt = "Hello there"
    expected = client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": prompt}], max_tokens=20,
        temperature=0).choices[0].message.content
    url = server.url + "/?prompt=Hello%20there&max_tokens=20&temperature=0"
    profile = tempfile.mkdtemp(prefix="fh1-chromium-")
    browser = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                "--window-size=1000,600", "--remote-debugging-port=0",
                                f"--user-data-dir={profile}", url],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = os.path.join(profile, "DevToolsActivePort")
        deadline = time.time() + 60
        while not os.path.exists(port_file) or not open(port_file).read().strip():
            assert time.time() < deadline, "chromium did not start"
            time.sleep(0.1)
        port = open(port_file).read().split()[0]
        page = None
        while page is None:
            assert time.time() < deadline, "no page target"
            targets = requests.get(f"http://127.0.0.1:{port}/json", timeout=10).json()
            page = next((t for t in targets if t["type"] == "page" and "webSocketDebuggerUrl" in t), None)
            time.sleep(0.1)
        tools = DevTools(page["webSocketDebuggerUrl"])
        state = None
        while state not in ("done", "error"):
            assert time.time() < deadline, f"the page did not finish (state {state})"
            time.sleep(0.1)
            state = tools.evaluate("document.body && document.body.dataset.state")
        shown = tools.evaluate("document.querySelector('.message.assistant .content').textContent")
        user_text = tools.evaluate("document.querySelector('.message.user .content').textContent")
        status = tools.evaluate("document.getElementById('status').textContent")
        shot = tools.call("Page.captureScreenshot", format="png")["data"]
        with open(os.path.join(os.environ.get("FH1_LOG_DIR", "/tmp"), "web_page.png"), "wb") as f:
            f.write(base64.b64decode(shot))
    finally:
        browser.terminate()
        try:
            browser.wait(timeout=20)
        except subprocess.TimeoutExpired:
            browser.kill()
        shutil.rmtree(profile, ignore_errors=True)
    assert state == "done", status
    assert user_text == prompt
    assert shown == expected  # the whole reply, assembled from the SSE stream by the page
    assert "finish: length" in status or "finish: stop" in status
