"""The Provisioning API from Python: register a BEFORE and an AFTER handler, emit both
kinds of event, and stream the execution log. Run against a server:

    python3 example.py 127.0.0.1:50051 http://127.0.0.1:8080/hook

(the URL is your handler endpoint; it must answer 2xx).
"""

import json
import sys
import time
import uuid

from provisioning.v1 import common_pb2, events_pb2, handlers_pb2, logs_pb2
from provisioning_client import connect


def main(target: str, handler_url: str) -> dict:
    client = connect(target)
    created = {}
    for phase, event in ((common_pb2.PHASE_BEFORE, "clients.update"), (common_pb2.PHASE_AFTER, "clients.create")):
        handler = client.handlers.Create(handlers_pb2.CreateHandlerRequest(
            name=f"python example {event}",
            event=event,
            phase=phase,
            http=handlers_pb2.HttpTarget(url=handler_url),
        ))
        created[event] = handler.id
        print(f"handler {handler.id} for {event}")

    # BEFORE: the handlers run now and decide.
    decision = client.events.Emit(events_pb2.EmitRequest(
        event="clients.update", phase=common_pb2.PHASE_BEFORE,
        data_json=json.dumps({"id": 15, "name": "Acme"}),
    ))
    print("BEFORE decision:", events_pb2.Decision.Name(decision.decision))

    # AFTER: stored, then delivered with retries; the key makes a retry of this call safe.
    accepted = client.events.Emit(events_pb2.EmitRequest(
        event="clients.create", phase=common_pb2.PHASE_AFTER,
        data_json=json.dumps({"id": 15}), idempotency_key=str(uuid.uuid4()),
    ))
    print(f"AFTER event {accepted.event_id} stored, {accepted.deliveries} delivery")

    # The execution log, streamed: wait for the delivery's row.
    rows = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rows = list(client.logs.Search(logs_pb2.SearchLogsRequest(
            filter=logs_pb2.LogFilter(events=["clients.update", "clients.create"]), limit=10)))
        if any(r.log.event == "clients.create" for r in rows):
            break
        time.sleep(0.1)
    for row in rows:
        log = row.log
        print(f"log {log.id}: {log.event} {common_pb2.Phase.Name(log.phase)} "
              f"{common_pb2.RunStatus.Name(log.status)} {log.duration_ms} ms")
    client.close()
    return {"decision": decision.decision, "event_id": accepted.event_id, "rows": rows, "handlers": created}


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
