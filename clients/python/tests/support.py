"""A real provisiond (its own embedded database, a free loopback port) and a recording
HTTP endpoint, for the tests that drive the service from outside: the Python client and
the README's commands."""

import http.server
import os
import pathlib
import socket
import subprocess
import tempfile
import threading

import grpc

ROOT = pathlib.Path(__file__).resolve().parents[3]
PROVISIOND = os.environ.get("PROVISIOND", str(ROOT / "target/debug/provisiond"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver(http.server.ThreadingHTTPServer):
    """Records every POST and answers 200."""

    def __init__(self, port: int = 0):
        self.requests = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.requests.append((dict(self.headers), body))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", port), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class Server:
    """`provisiond --listen 127.0.0.1:<free port> --data-dir <temp dir>`, started and
    healthy; `stop()` sends SIGTERM and waits."""

    def __init__(self):
        self.data_dir = tempfile.TemporaryDirectory(prefix="prov-py-", dir="/tmp")
        os.chmod(self.data_dir.name, 0o755)
        self.target = f"127.0.0.1:{free_port()}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIOND_") and k != "DATABASE_URL"}
        self._log_path = pathlib.Path(self.data_dir.name) / "provisiond.log"
        self._log = open(self._log_path, "w")
        self.process = subprocess.Popen(
            [PROVISIOND, "--listen", self.target, "--data-dir", self.data_dir.name],
            env=env, stdout=self._log, stderr=subprocess.STDOUT)
        channel = grpc.insecure_channel(self.target)
        try:
            grpc.channel_ready_future(channel).result(timeout=90)
        except grpc.FutureTimeoutError:
            self.stop()
            raise AssertionError("provisiond did not start: " + self.log())
        finally:
            channel.close()

    def log(self) -> str:
        return self._log_path.read_text() if self._log_path.exists() else ""

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=60)
        self._log.close()
        self.data_dir.cleanup()
