"""docs/examples/flask_echo.py, the handler guide's first example, run as a real
process (Flask's server on a free port) behind a real provisiond: as a BEFORE handler
it allows the event and leaves the data byte for byte as emitted, it refuses a request
signed with another secret (which forbids the event), and as an AFTER handler it
answers the delivery with 2xx. Needs Flask and PyPI `standardwebhooks` (`.ci/run`
installs them), `./generate` first and `PROVISIOND` (default: target/debug/provisiond).
"""

import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import tempfile
import time
import unittest

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE)]

from provisioning.v1 import common_pb2, events_pb2, handlers_pb2, logs_pb2  # noqa: E402
from provisioning_client import connect  # noqa: E402
from support import ROOT, Server, free_port  # noqa: E402

EXAMPLE = ROOT / "docs/examples/flask_echo.py"
# Numbers a re-encoding handler would change (12.50 -> 12.5) and a non-ASCII string.
DATA = '{"id": 9007199254740993, "credit": 12.50, "name": "Zoë"}'
# A valid secret of no handler.
OTHER_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class FlaskEcho:
    """`python3 docs/examples/flask_echo.py` with PORT and WEBHOOK_SECRET, listening."""

    def __init__(self, port: int, secret: str):
        self.port = port
        self.log = tempfile.TemporaryFile()
        env = dict(os.environ, PORT=str(port), WEBHOOK_SECRET=secret)
        self.process = subprocess.Popen([sys.executable, str(EXAMPLE)], env=env,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"flask_echo.py did not start: {self.output()}")
                time.sleep(0.1)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.log.close()


class GuideTest(unittest.TestCase):
    def test_the_guides_flask_listing_is_the_example_file(self):
        guide = (ROOT / "docs/handler-guide.md").read_text()
        section = guide.split("## A first handler", 1)[1].split("\n## ", 1)[0]
        listings = re.findall(r"```python\n(.*?)```", section, re.S)
        self.assertEqual(len(listings), 2, "the original and the adapted handler")
        self.assertIn(listings[1], EXAMPLE.read_text())
        self.assertIn("## A first handler", guide.split("## HTTP handlers", 1)[0])


class FlaskEchoTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server()
        cls.client = connect(cls.server.target)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.server.stop()

    def echo_handler(self, event: str, phase: int, secret=None):
        """Registers flask_echo.py (on a free port) for `event` and starts it with the
        handler's secret, or with `secret`. Returns the handler."""
        port = free_port()
        handler = self.client.handlers.Create(handlers_pb2.CreateHandlerRequest(
            name=f"flask echo {event}", event=event, phase=phase,
            http=handlers_pb2.HttpTarget(url=f"http://127.0.0.1:{port}/api")))
        self.assertTrue(handler.http.secret.startswith("whsec_"))
        echo = FlaskEcho(port, secret or handler.http.secret)
        self.addCleanup(echo.stop)
        self.echo = echo
        return handler

    def test_before_allows_and_leaves_the_data_byte_for_byte(self):
        handler = self.echo_handler("clients.update", common_pb2.PHASE_BEFORE)
        reply = self.client.events.Emit(events_pb2.EmitRequest(
            event="clients.update", phase=common_pb2.PHASE_BEFORE, data_json=DATA))
        self.assertEqual(reply.decision, events_pb2.DECISION_ALLOWED, (reply.reason, self.echo.output()))
        self.assertEqual(reply.data_json, DATA)
        self.assertEqual([(r.handler_id, r.outcome) for r in reply.results],
                         [(handler.id, events_pb2.HANDLER_OUTCOME_PASSED)])

    def test_before_signed_with_another_secret_is_refused_and_forbids(self):
        handler = self.echo_handler("clients.delete", common_pb2.PHASE_BEFORE, secret=OTHER_SECRET)
        reply = self.client.events.Emit(events_pb2.EmitRequest(
            event="clients.delete", phase=common_pb2.PHASE_BEFORE, data_json=DATA))
        self.assertEqual(reply.decision, events_pb2.DECISION_FORBIDDEN)
        self.assertIn("bad signature", reply.reason)
        self.assertEqual([(r.handler_id, r.outcome) for r in reply.results],
                         [(handler.id, events_pb2.HANDLER_OUTCOME_FORBADE)])

    def test_after_delivery_succeeds_and_the_echo_is_logged(self):
        handler = self.echo_handler("clients.create", common_pb2.PHASE_AFTER)
        accepted = self.client.events.Emit(events_pb2.EmitRequest(
            event="clients.create", phase=common_pb2.PHASE_AFTER, data_json=DATA))
        self.assertEqual(accepted.deliveries, 1)
        rows = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = [r.log for r in self.client.logs.Search(logs_pb2.SearchLogsRequest(
                filter=logs_pb2.LogFilter(handler_id=handler.id, event_id=accepted.event_id), limit=10))]
            if rows:
                break
            time.sleep(0.1)
        self.assertEqual(len(rows), 1, self.echo.output())
        log = rows[0]
        self.assertEqual((log.status, log.http_status, log.attempt),
                         (common_pb2.RUN_STATUS_SUCCESS, 200, 1), (log.error, self.echo.output()))
        self.assertEqual(json.loads(log.response), json.loads(DATA))
        self.assertIn('"credit": 12.50', log.response)


if __name__ == "__main__":
    unittest.main()
