"""The first example handler: the Flask echo handler of the original product's
documentation, adapted to this service. It lets every event through unchanged.

    pip install flask standardwebhooks
    WEBHOOK_SECRET=whsec_... PORT=5000 python3 flask_echo.py
    provctl handlers create --name echo --event clients.update --phase before \\
        --http http://127.0.0.1:5000/api

The original was::

    @app.route("/api", methods=['GET', 'POST'])
    def api():
        data = json.loads(request.data)
        return json.dumps(data)

What changed, and why:

- It echoes the body **as received**. Re-encoding it (``json.dumps(json.loads(...))``)
  turns ``12.50`` into ``12.5``: for a BEFORE event the service would take that as new
  data and pass the re-encoded version on. The same bytes back (or an empty 2xx body)
  mean "allowed, unchanged"; for an AFTER event any 2xx means "done".
- POST only: the service only POSTs (a GET had no body and failed in ``json.loads``).
- The reply is ``application/json`` (Flask sent ``json.dumps``'s string as text/html).
- When ``WEBHOOK_SECRET`` (the handler's ``whsec_...`` secret) is set, the request is
  verified with the Standard Webhooks library first; a 401 forbids a BEFORE event and
  is retried for an AFTER one. Without it, anyone who can reach the port is believed.
- Numbers are parsed as ``Decimal``, so ``12.50`` stays exact if you act on the data.
"""

import decimal
import json
import os

from flask import Flask, Response, request
from standardwebhooks import Webhook, WebhookVerificationError

app = Flask(__name__)
SECRET = os.environ.get("WEBHOOK_SECRET")
webhook = Webhook(SECRET) if SECRET else None


@app.route("/api", methods=["POST"])
def api():
    body = request.get_data()  # the raw bytes: verify these, never re-serialised JSON
    if webhook is not None:
        try:
            webhook.verify(body, request.headers, json_parse=False)
        except WebhookVerificationError as error:
            return Response(f"bad signature: {error}", status=401, mimetype="text/plain")
    data = json.loads(body, parse_float=decimal.Decimal)
    # ... act on `data` here (for AFTER events, once per webhook-id: see Idempotency) ...
    return Response(body, mimetype="application/json")


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))
