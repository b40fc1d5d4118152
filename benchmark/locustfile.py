"""Load test for the tracking API with Locust.

    make load USERS=20 DURATION=30      # headless, against `make run`'s PORT and WRITE_KEY
    locust -f benchmark/locustfile.py --headless -u 50 -r 10 -t 1m --host https://<api>/prod
    locust -f benchmark/locustfile.py --host http://127.0.0.1:8080   # web UI on :8089, waits for start

Locust is in the ``load`` extra (``pip install -e '.[load]'``; ``make load`` installs it).

Host and key come from the command line (``--host``, ``--write-key``) or the environment
(``CLICKSTREAM_HOST``, ``CLICKSTREAM_WRITE_KEY``), never from this file. Two kinds of users:
browsers (analytics.js style: one event per request to the short routes, ``text/plain``, key in the
body) and servers (SDK style: batches to ``/v1/batch`` with Basic auth). Each user has its own ids.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import random
import uuid

from locust import HttpUser, between, events, task

DEFAULT_KEY = "dev-write-key"


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument("--write-key", default=os.environ.get("CLICKSTREAM_WRITE_KEY", DEFAULT_KEY),
                        help="tracking API write key (env CLICKSTREAM_WRITE_KEY)")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class BrowserUser(HttpUser):
    """analytics-next in a browser: /v1/p and /v1/t, text/plain bodies, writeKey in each body."""

    weight = 3
    wait_time = between(0.5, 2)

    def on_start(self) -> None:
        self.anonymous_id = str(uuid.uuid4())
        self.key = self.environment.parsed_options.write_key

    def _send(self, route: str, message: dict) -> None:
        body = {**message, "anonymousId": self.anonymous_id, "writeKey": self.key, "timestamp": _now(),
                "sentAt": _now(), "messageId": f"ajs-next-{int(dt.datetime.now().timestamp() * 1000)}-{uuid.uuid4()}",
                "context": {"library": {"name": "analytics.js", "version": "npm:next-1.84.0"},
                            "page": {"path": message.get("name", "/"), "url": f"https://shop.example/{route}"}}}
        with self.client.post(f"/v1/{route}", data=json.dumps(body), headers={"Content-Type": "text/plain"},
                              name=f"/v1/{route}", catch_response=True) as response:
            if response.status_code != 200 or response.json() != {"success": True}:
                response.failure(f"{response.status_code}: {response.text[:200]}")

    @task(5)
    def page(self) -> None:
        self._send("p", {"type": "page", "name": random.choice(["Home", "Pricing", "Docs"])})

    @task(2)
    def track(self) -> None:
        self._send("t", {"type": "track", "event": "Product Viewed", "properties": {"sku": random.randint(1, 500)}})


class ServerUser(HttpUser):
    """A backend SDK: batches of 20-100 events to /v1/batch with Basic auth."""

    weight = 1
    wait_time = between(0.2, 1)

    def on_start(self) -> None:
        key = self.environment.parsed_options.write_key
        self.auth = {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode(),
                     "Content-Type": "application/json"}
        self.user_ids = [f"user-{uuid.uuid4().hex[:10]}" for _ in range(20)]

    @task
    def batch(self) -> None:
        batch = [{"type": "track", "event": "Order Completed", "userId": random.choice(self.user_ids),
                  "messageId": str(uuid.uuid4()), "timestamp": _now(),
                  "properties": {"revenue": round(random.uniform(5, 200), 2), "currency": "EUR"},
                  "context": {"library": {"name": "analytics-python", "version": "2.4.0"}}}
                 for _ in range(random.randint(20, 100))]
        with self.client.post("/v1/batch", data=json.dumps({"batch": batch, "sentAt": _now()}), headers=self.auth,
                              name="/v1/batch", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
