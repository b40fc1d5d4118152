"""``clickstream simulate``: realistic traffic sent with the official Segment Python SDK.

Users come back in sessions with a stable anonymous id; they view pages with real-looking context
(URL, referrer, user agent, locale, campaign), some sign up (track -> identify -> alias from the
anonymous id), walk a purchase funnel, join a company (group) or use the mobile app (screens).
With ``--seed`` the same run produces the same events, message ids included.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PAGES = [("/", "Home"), ("/pricing", "Pricing"), ("/docs", "Docs"), ("/docs/install", "Install"),
         ("/blog/clickstream-on-aws", "Clickstream on AWS"), ("/signup", "Sign up"), ("/products/shoes", "Shoes"),
         ("/products/shoes/runner-2", "Runner 2"), ("/cart", "Cart"), ("/checkout", "Checkout")]
REFERRERS = ["https://www.google.com/", "https://news.ycombinator.com/", "https://t.co/x", "", ""]
USER_AGENTS = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 "
    "Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
]
LOCALES = ["en-US", "en-GB", "fr-FR", "de-DE", "es-ES", "ja-JP"]
CAMPAIGNS = [None, None, {"name": "spring_sale", "source": "newsletter", "medium": "email"},
             {"name": "brand", "source": "google", "medium": "cpc", "term": "clickstream"}]
FUNNEL = ["Product Viewed", "Product Added", "Checkout Started", "Payment Info Entered", "Order Completed"]
SCREENS = [("Onboarding", "Welcome"), ("Catalog", "Home"), ("Catalog", "Product"), ("Account", "Settings")]
COMPANIES = ["acme", "globex", "initech", "umbrella", "hooli"]


@dataclass
class SimUser:
    anonymous_id: str
    user_id: str | None = None
    mobile: bool = False
    user_agent: str = ""
    locale: str = "en-US"
    campaign: dict | None = None


@dataclass
class Summary:
    by_type: Counter = field(default_factory=Counter)
    errors: int = 0
    seconds: float = 0.0
    first_error: str | None = None

    @property
    def events(self) -> int:
        """Events generated (sent or failed)."""
        return sum(self.by_type.values())

    @property
    def accepted(self) -> int:
        return max(self.events - self.errors, 0)


class Simulator:
    """Generates events for ``users`` simulated people; ``send`` is an SDK client (or a fake)."""

    def __init__(self, client: Any, users: int = 50, seed: int | None = None, host: str = "shop.example.com") -> None:
        self.client = client
        self.rng = random.Random(seed)
        self.host = host
        self.users = [self._new_user() for _ in range(users)]
        self.summary = Summary()

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _new_user(self) -> SimUser:
        return SimUser(anonymous_id=self._uuid(), mobile=self.rng.random() < 0.25,
                       user_agent=self.rng.choice(USER_AGENTS), locale=self.rng.choice(LOCALES),
                       campaign=self.rng.choice(CAMPAIGNS))

    def _context(self, user: SimUser, path: str = "/", title: str = "") -> dict:
        ctx: dict[str, Any] = {"userAgent": user.user_agent, "locale": user.locale, "timezone": "Europe/Paris"}
        if user.mobile:
            ctx["app"] = {"name": "Shop", "version": "3.2.1", "build": "321"}
            ctx["device"] = {"type": "ios", "model": "iPhone15,2"}
            ctx["os"] = {"name": "iOS", "version": "17.5"}
        else:
            ctx["page"] = {"url": f"https://{self.host}{path}", "path": path, "title": title,
                           "referrer": self.rng.choice(REFERRERS), "search": ""}
        if user.campaign:
            ctx["campaign"] = dict(user.campaign)
        return ctx

    def _ids(self, user: SimUser) -> dict:
        return {"user_id": user.user_id, "anonymous_id": user.anonymous_id, "message_id": self._uuid()}

    def _count(self, kind: str) -> None:
        self.summary.by_type[kind] += 1

    def session(self, user: SimUser) -> Iterator[str]:
        """One visit: yields after each event so the caller can pace and stop."""
        if user.mobile:
            for category, name in self.rng.sample(SCREENS, k=self.rng.randint(1, 3)):
                self.client.screen(category=category, name=name, properties={"tab": name.lower()},
                                   context=self._context(user), **self._ids(user))
                self._count("screen")
                yield "screen"
        else:
            for path, title in self.rng.sample(PAGES, k=self.rng.randint(1, 4)):
                self.client.page(category="Web", name=title, properties={"url": f"https://{self.host}{path}",
                                                                         "path": path, "title": title},
                                 context=self._context(user, path, title), **self._ids(user))
                self._count("page")
                yield "page"
        if user.user_id is None and self.rng.random() < 0.3:
            user.user_id = f"user-{self._uuid()[:8]}"
            email = f"{user.user_id}@example.com"
            self.client.track(event="Signed Up", properties={"plan": self.rng.choice(["free", "pro"])},
                              context=self._context(user, "/signup", "Sign up"), **self._ids(user))
            self._count("track")
            yield "track"
            self.client.identify(traits={"email": email, "name": f"User {user.user_id[-4:]}",
                                         "created_at": (dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
                                             minutes=self.rng.randint(0, 500_000))).isoformat()},
                                 context=self._context(user), **self._ids(user))
            self._count("identify")
            yield "identify"
            self.client.alias(previous_id=user.anonymous_id, user_id=user.user_id, context=self._context(user),
                              message_id=self._uuid())
            self._count("alias")
            yield "alias"
        depth = self.rng.choices(range(len(FUNNEL) + 1), weights=[30, 30, 15, 10, 8, 7])[0]
        product = f"sku-{self.rng.randint(1, 500)}"
        for step in FUNNEL[:depth]:
            self.client.track(event=step, properties={"product_id": product, "price": 49.9, "currency": "EUR"},
                              context=self._context(user, "/products/shoes/runner-2", "Runner 2"), **self._ids(user))
            self._count("track")
            yield "track"
        if user.user_id and self.rng.random() < 0.1:
            self.client.group(group_id=self.rng.choice(COMPANIES), traits={"plan": "enterprise"},
                              context=self._context(user), **self._ids(user))
            self._count("group")
            yield "group"

    def run(self, *, events: int | None = None, duration: float | None = None, rate: float | None = None,
            on_event=None) -> Summary:
        start = time.monotonic()
        sent = 0

        def done() -> bool:
            return (events is not None and sent >= events) or (
                duration is not None and time.monotonic() - start >= duration)

        while not done():
            user = self.rng.choice(self.users)
            for _ in self.session(user):
                sent += 1
                if on_event:
                    on_event()
                if rate:
                    ahead = sent / rate - (time.monotonic() - start)
                    if ahead > 0:
                        time.sleep(ahead)
                if done():
                    break
        self.summary.seconds = time.monotonic() - start
        return self.summary


DEFAULT_HOST = "http://127.0.0.1:8080"
HOST_ENV = "CLICKSTREAM_HOST"
# How long the SDK keeps retrying a failing batch. Its default (12 h, ~4 min for 10 retries) suits
# a production service that must not lose events; a simulator whose server went away should stop.
GIVE_UP_SECONDS = 20


class EndpointError(Exception):
    """The tracking API cannot take events: the message says what to do."""


def default_host(data_dir: Path) -> str:
    """The host ``simulate`` sends to without ``--host``: ``$CLICKSTREAM_HOST``, else the address of
    the ``clickstream local`` running on ``data_dir`` (so ``make run PORT=9000`` needs no flag), else
    the default port."""
    if os.environ.get(HOST_ENV):
        return os.environ[HOST_ENV]
    from clickstream.collector import ADMIN_QUERY_PATH
    from clickstream.query import _running  # local.json of a live `clickstream local`, or None

    state = _running(data_dir)
    if state and str(state.get("admin_url", "")).endswith(ADMIN_QUERY_PATH):
        return state["admin_url"].removesuffix(ADMIN_QUERY_PATH)
    return DEFAULT_HOST


def check_endpoint(host: str, write_key: str, timeout: float = 5.0) -> None:
    """Ask the API for the write key's settings (the route analytics.js loads first) before sending.

    Without it an unreachable host costs the SDK's whole retry schedule before anything is said.
    A 401/403 means the key is refused; any other answer means something is listening.
    """
    import urllib.error
    import urllib.request

    from clickstream import contract

    url = host.rstrip("/") + contract.SETTINGS_PATH.replace("{writeKey}", urllib.request.quote(write_key, safe=""))
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise EndpointError(f"{host} refuses the write key {write_key!r} (HTTP {exc.code}): pass one it accepts "
                                "with --write-key (env CLICKSTREAM_WRITE_KEY)") from exc
        return  # something that speaks HTTP answers; the SDK reports what it says about events
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise EndpointError(f"nothing answers at {host} ({reason}): start the pipeline first (`make run`, or "
                            "`clickstream local --port N`) or pass --host URL (env CLICKSTREAM_HOST)") from exc


def run_simulation(host: str, write_key: str, *, users: int, events: int | None, duration: float | None,
                   rate: float | None, seed: int | None, progress: bool = True) -> Summary:
    from segment.analytics import Client

    errors = []
    lock = threading.Lock()

    def on_error(error, batch) -> None:
        with lock:
            errors.append((error, len(batch)))

    # Failures are counted and summarised by the caller; the SDK's own log would print a traceback.
    logging.getLogger("segment").setLevel(logging.CRITICAL)
    began = time.monotonic()
    client = Client(write_key, host=host.rstrip("/"), on_error=on_error, upload_size=100, max_queue_size=100_000,
                    gzip=True, max_total_backoff_duration=GIVE_UP_SECONDS)
    sim = Simulator(client, users=users, seed=seed)
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("[bold]simulate"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
            task = bar.add_task("events", total=events)
            summary = sim.run(events=events, duration=duration, rate=rate, on_event=lambda: bar.advance(task))
    else:
        summary = sim.run(events=events, duration=duration, rate=rate)
    client.flush()  # the summary counts only what the API acknowledged or refused
    client.join()
    summary.errors = sum(n for _, n in errors)
    summary.first_error = str(errors[0][0]) if errors else None
    summary.seconds = max(time.monotonic() - began, 1e-9)
    return summary
