"""Send a signed webhook to an integration's ingestion URL, as a partner system would.

    python send_webhook.py URL TOKEN SIGNING_KEY '{"device_id": "pump-7", ...}'

The body is signed with HMAC-SHA256 (hex, header ``x-hmac-sha256``) and the endpoint's
token goes in ``Authorization: Bearer``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys

import httpx


def send(url: str, token: str, signing_key: str, payload: dict[str, object]) -> httpx.Response:
    body = json.dumps(payload).encode()
    signature = hmac.new(signing_key.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "Authorization": f"Bearer {token}",
        "x-hmac-sha256": signature,
        "Content-Type": "application/json",
    }
    return httpx.post(url, content=body, headers=headers, timeout=30)


def main() -> None:
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    url, token, key, payload = sys.argv[1:]
    response = send(url, token, key, json.loads(payload))
    print(response.status_code, response.text)


if __name__ == "__main__":
    main()
