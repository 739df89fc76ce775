"""Verifies a Provisioning API delivery the Standard Webhooks way (Python 3, standard
library only).

Use ``verify(secret, headers, body)`` in your handler before acting on a request:
``secret`` is the handler's ``whsec_...`` secret, ``headers`` the request headers
(any mapping; names are looked up in lower case), ``body`` the raw request body as
bytes, exactly as received (do not re-serialise parsed JSON: the signature covers
the bytes).

Run as a program (this is how the repository's tests run it):
``python3 verify.py SECRET HEADERS_JSON < body`` prints ``valid`` and exits 0, or prints
the reason and exits 1.
"""

import base64
import hashlib
import hmac
import json
import sys
import time

#: How far webhook-timestamp may be from now, in seconds (replay protection).
TOLERANCE_SECONDS = 5 * 60


class InvalidSignature(Exception):
    """The request was not signed with this secret, or is too old or too new."""


def verify(secret, headers, body, now=None, tolerance=TOLERANCE_SECONDS):
    """Returns None if the request is authentic, raises InvalidSignature otherwise."""
    headers = {name.lower(): value for name, value in headers.items()}
    try:
        msg_id = headers["webhook-id"]
        timestamp = headers["webhook-timestamp"]
        signatures = headers["webhook-signature"]
    except KeyError as missing:
        raise InvalidSignature(f"missing header {missing}") from None
    now = time.time() if now is None else now
    try:
        if abs(now - int(timestamp)) > tolerance:
            raise InvalidSignature("timestamp outside the tolerance")
    except ValueError:
        raise InvalidSignature("bad webhook-timestamp") from None
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    # Several space-separated signatures may be sent (e.g. during a key rotation).
    for candidate in signatures.split():
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(signature, expected):
            return None
    raise InvalidSignature("no matching signature")


if __name__ == "__main__":
    secret, headers = sys.argv[1], json.loads(sys.argv[2])
    try:
        verify(secret, headers, sys.stdin.buffer.read())
    except InvalidSignature as error:
        print(f"invalid: {error}")
        sys.exit(1)
    print("valid")
