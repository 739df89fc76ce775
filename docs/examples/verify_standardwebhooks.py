"""Verifies a Provisioning API delivery with the Standard Webhooks library for Python
(PyPI ``standardwebhooks``: ``pip install standardwebhooks``).

In a handler::

    from standardwebhooks import Webhook, WebhookVerificationError

    webhook = Webhook(SECRET)  # the handler's whsec_... secret
    try:
        webhook.verify(body, headers, json_parse=False)
    except WebhookVerificationError:
        ...  # answer 401: not from provisiond (or too old)

``body`` is the raw request body, bytes exactly as received; ``headers`` any mapping
of the request headers. ``verify`` checks the three ``webhook-*`` headers, the
5-minute timestamp tolerance and every ``v1,`` signature, the same checks as the
standard-library ``verify.py`` next to this file.

Run as a program (this is how the repository's tests run it):
``python3 verify_standardwebhooks.py SECRET HEADERS_JSON < body`` prints ``valid`` and
exits 0, or prints the reason and exits 1.
"""

import json
import sys

from standardwebhooks import Webhook, WebhookVerificationError

if __name__ == "__main__":
    secret, headers = sys.argv[1], json.loads(sys.argv[2])
    try:
        Webhook(secret).verify(sys.stdin.buffer.read(), headers, json_parse=False)
    except WebhookVerificationError as error:
        print(f"invalid: {error}")
        sys.exit(1)
    print("valid")
