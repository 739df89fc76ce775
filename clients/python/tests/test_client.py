"""The Python client against a real provisiond (its own embedded database) and a real
HTTP handler endpoint: the example runs end to end, the signed delivery arrives with
the emitter's trace, and error details decode with grpcio-status.

Run by `.ci/run` (`python3 -m unittest discover -s clients/python/tests`); needs
`./generate` first and `PROVISIOND` (default: target/debug/provisiond).
"""

import json
import pathlib
import sys
import unittest

import grpc

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE.parent)]

from provisioning.v1 import common_pb2, events_pb2, handlers_pb2  # noqa: E402
from provisioning_client import connect, field_violations  # noqa: E402
import example  # noqa: E402
from support import Receiver, Server  # noqa: E402

class ClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server()
        cls.target = cls.server.target
        cls.receiver = Receiver()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.receiver.shutdown()

    def test_the_example_runs_end_to_end(self):
        result = example.main(self.target, self.receiver.url)
        self.assertEqual(result["decision"], events_pb2.DECISION_ALLOWED)
        self.assertGreater(result["event_id"], 0)
        events = {(r.log.event, r.log.status) for r in result["rows"]}
        self.assertIn(("clients.create", common_pb2.RUN_STATUS_SUCCESS), events)
        self.assertIn(("clients.update", common_pb2.RUN_STATUS_SUCCESS), events)
        bodies = [json.loads(body) for _, body in self.receiver.requests]
        self.assertIn({"id": 15}, bodies)
        self.assertIn({"id": 15, "name": "Acme"}, bodies)

    def test_the_emitters_trace_reaches_the_handler(self):
        client = connect(self.target)
        client.handlers.Create(handlers_pb2.CreateHandlerRequest(
            name="traced", event="accounts.create", phase=common_pb2.PHASE_BEFORE,
            http=handlers_pb2.HttpTarget(url=self.receiver.url)))
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        client.events.Emit(events_pb2.EmitRequest(event="accounts.create", phase=common_pb2.PHASE_BEFORE,
                                                  data_json='{"trace": 1}'),
                           metadata=[("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01")])
        headers = [h for h, body in self.receiver.requests if json.loads(body) == {"trace": 1}]
        self.assertEqual(len(headers), 1)
        traceparent = {k.lower(): v for k, v in headers[0].items()}["traceparent"]
        self.assertTrue(traceparent.startswith(f"00-{trace_id}-"), traceparent)
        client.close()

    def test_invalid_arguments_carry_field_violations(self):
        client = connect(self.target)
        with self.assertRaises(grpc.RpcError) as caught:
            client.events.Emit(events_pb2.EmitRequest(event="clients.create", phase=common_pb2.PHASE_AFTER,
                                                      data_json="[1, 2]"))
        error = caught.exception
        self.assertEqual(error.code(), grpc.StatusCode.INVALID_ARGUMENT)
        violations = field_violations(error)
        self.assertEqual(len(violations), 1, violations)
        self.assertEqual(violations[0][0], "data_json")
        self.assertIn("object", violations[0][1])
        with self.assertRaises(grpc.RpcError) as caught:
            client.handlers.Create(handlers_pb2.CreateHandlerRequest(
                name="bad", event="clients.create", phase=common_pb2.PHASE_AFTER,
                http=handlers_pb2.HttpTarget(url="ftp://example.com/")))
        self.assertEqual([f for f, _ in field_violations(caught.exception)], ["http.url"])
        client.close()


if __name__ == "__main__":
    unittest.main()
