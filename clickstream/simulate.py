"""``clickstream simulate``: realistic traffic sent with the official Segment Python SDK.

Users arrive over a window of days (``--days``, 7 by default) and come back in visits with a stable
anonymous id, so sessions, funnels and retention show in the warehouse. Within a visit, events are
seconds to minutes apart; visits of one user are at least 30 minutes apart (the usual session
gap). Each event's ``timestamp`` is when it happened; the SDK sets ``sentAt`` when it uploads,
as it does for events buffered offline, and the server derives ``timestamp`` from both (Segment's
clock-skew rule), so the warehouse shows the simulated times. No visit starts or ends in the
future: once the window is used up, visits end at the current time, as live traffic.

Web visits send what analytics.js sends for a page: ``context.page`` and the page properties
``url``, ``path``, ``title``, ``referrer``, ``search`` (and ``name``); a visit that lands from a
campaign carries the UTM parameters in the URL's ``search`` and in ``context.campaign``. Some
users sign up (track -> identify -> alias from the anonymous id), walk a purchase funnel, join a
company (group); a quarter use the mobile app (screens). With ``--seed`` (and the same clock) the
same run produces the same events, message ids included.
"""

from __future__ import annotations

import datetime as dt
import heapq
import logging
import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

SITE_NAME = "Shop"
PAGES = [("/", "Home"), ("/pricing", "Pricing"), ("/docs", "Docs"), ("/docs/install", "Install"),
         ("/blog/clickstream-on-aws", "Clickstream on AWS"), ("/products/shoes", "Shoes"),
         ("/products/shoes/runner-2", "Runner 2"), ("/cart", "Cart")]
SIGNUP_PAGE = ("/signup", "Sign up")
PRODUCT_PAGE = ("/products/shoes/runner-2", "Runner 2")
CHECKOUT_PAGE = ("/checkout", "Checkout")
REFERRERS = ["https://www.google.com/", "https://news.ycombinator.com/", "https://t.co/x", "", ""]
USER_AGENTS = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 "
    "Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
]
TIMEZONE_OF = {"en-US": "America/New_York", "en-GB": "Europe/London", "fr-FR": "Europe/Paris",
               "de-DE": "Europe/Berlin", "es-ES": "Europe/Madrid", "ja-JP": "Asia/Tokyo"}
LOCALES = list(TIMEZONE_OF)
# Acquisition channels: a campaign (with the referrer its click comes from) or none.
CAMPAIGNS: list[tuple[dict[str, str], str] | None] = [
    None, None,
    ({"name": "spring_sale", "source": "newsletter", "medium": "email", "content": "hero"}, ""),
    ({"name": "brand", "source": "google", "medium": "cpc", "term": "clickstream"}, "https://www.google.com/"),
]
FUNNEL = ["Product Viewed", "Product Added", "Checkout Started", "Payment Info Entered", "Order Completed"]
SCREENS = [("Onboarding", "Welcome"), ("Catalog", "Home"), ("Catalog", "Product"), ("Account", "Settings")]
COMPANIES = ["acme", "globex", "initech", "umbrella", "hooli"]
SESSION_GAP = dt.timedelta(minutes=30)  # the usual sessionization threshold: visits are further apart
MAX_VISIT = dt.timedelta(minutes=20)  # longer than any planned visit (about 16 minutes at most)
EVENTS_PER_VISIT = 5.0  # what session() yields on average (measured); sizes the gaps between visits
# Returns are sized to fill this share of the window on average: the run then ends within a day or
# so of now, and rarely overshoots into newcomers (an overshoot would bunch visits at now).
FILL = 0.7


@dataclass
class SimUser:
    anonymous_id: str
    user_id: str | None = None
    mobile: bool = False
    user_agent: str = ""
    locale: str = "en-US"
    campaign: tuple[dict[str, str], str] | None = None
    visits: int = 0
    last_end: dt.datetime | None = None


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


@dataclass
class _Call:
    """One planned SDK call, ``offset`` seconds into its visit."""

    offset: float
    method: str
    kwargs: dict[str, Any]


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Simulator:
    """Generates events for ``users`` simulated people; ``client`` is an SDK client (or a fake).

    ``days``: the window, ending at ``clock()``, over which users arrive and come back.
    """

    def __init__(self, client: Any, users: int = 50, seed: int | None = None, host: str = "shop.example.com",
                 days: float = 7.0, clock: Callable[[], dt.datetime] = _utc_now) -> None:
        self.client = client
        self.rng = random.Random(seed)
        self.host = host
        self.clock = clock
        self.window = dt.timedelta(days=max(days, 0.0))
        self.start = clock() - self.window
        self.users = [self._new_user() for _ in range(users)]
        self.summary = Summary()
        self._due: list[tuple[dt.datetime, int]] | None = None  # (next visit, user index), set by run()
        self.mean_gap = dt.timedelta(days=1)

    def _plan_arrivals(self, events: int | None) -> None:
        """Spread first visits and size the gaps between visits so that the run fills the window.

        Visits happen in time order, so a run of ``events`` makes about ``events / EVENTS_PER_VISIT``
        visits from the start of the window: with fewer visits than users, arrivals are spread over
        a longer span, of which the window holds the ones the run reaches; with more, users come back
        often enough to reach the end of the window. Without an event count: a visit a day or so.
        """
        users = max(len(self.users), 1)
        span = self.window
        if events:
            visits = max(events / EVENTS_PER_VISIT, 1.0)
            if visits <= users:
                span = self.window * (users / visits)
                self.mean_gap = max(self.window, dt.timedelta(minutes=1))
            else:  # a user arriving mid-window on average has half of it left for (visits/users - 1) returns
                self.mean_gap = max(self.window * FILL / 2 / (visits / users - 1), dt.timedelta(minutes=1))
        self._due = [(self.start + span * self.rng.random(), i) for i in range(len(self.users))]
        heapq.heapify(self._due)

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _new_user(self) -> SimUser:
        return SimUser(anonymous_id=self._uuid(), mobile=self.rng.random() < 0.25,
                       user_agent=self.rng.choice(USER_AGENTS), locale=self.rng.choice(LOCALES),
                       campaign=self.rng.choice(CAMPAIGNS))

    # -- what analytics.js puts in a web event -------------------------------------------------
    def _page(self, page: tuple[str, str], referrer: str, campaign: dict[str, str] | None) -> dict[str, str]:
        """analytics.js's page defaults: the same five fields in context.page and page properties."""
        path, title = page
        search = "?" + urlencode({f"utm_{k if k != 'name' else 'campaign'}": v for k, v in campaign.items()}) \
            if campaign else ""
        return {"path": path, "referrer": referrer, "search": search, "title": f"{title} | {SITE_NAME}",
                "url": f"https://{self.host}{path}{search}"}

    def _context(self, user: SimUser, page: dict[str, str] | None = None,
                 campaign: dict[str, str] | None = None) -> dict:
        ctx: dict[str, Any] = {"userAgent": user.user_agent, "locale": user.locale,
                               "timezone": TIMEZONE_OF[user.locale]}
        if user.mobile:
            ctx["app"] = {"name": SITE_NAME, "version": "3.2.1", "build": "321"}
            ctx["device"] = {"type": "ios", "model": "iPhone15,2"}
            ctx["os"] = {"name": "iOS", "version": "17.5"}
        elif page is not None:
            ctx["page"] = dict(page)
        if campaign:
            ctx["campaign"] = dict(campaign)
        return ctx

    def _ids(self, user: SimUser) -> dict:
        return {"user_id": user.user_id, "anonymous_id": user.anonymous_id, "message_id": self._uuid()}

    def _plan(self, user: SimUser) -> list[_Call]:
        """One visit's calls, each ``offset`` seconds after the visit starts."""
        calls: list[_Call] = []
        offset = 0.0

        def add(method: str, **kwargs: Any) -> None:
            calls.append(_Call(offset, method, kwargs))

        def later(low: float, high: float) -> None:
            nonlocal offset
            offset += self.rng.uniform(low, high)

        campaign = None
        if user.visits == 0 and user.campaign:
            campaign, referrer = user.campaign  # the first visit lands from the acquisition campaign
        else:
            referrer = self.rng.choice(REFERRERS)
        user.visits += 1
        current: dict[str, str] | None = None

        def view(page: tuple[str, str]) -> None:
            nonlocal current, referrer
            current = self._page(page, referrer, campaign if current is None else None)
            add("page", category="Web", name=page[1], properties={**current, "name": page[1]},
                context=self._context(user, current, campaign if current["search"] else None), **self._ids(user))
            referrer = current["url"]
            later(8, 90)

        if user.mobile:
            for category, name in self.rng.sample(SCREENS, k=self.rng.randint(1, 3)):
                add("screen", category=category, name=name, properties={"tab": name.lower()},
                    context=self._context(user, campaign=campaign), **self._ids(user))
                later(5, 60)
        else:
            for page in self.rng.sample(PAGES, k=self.rng.randint(1, 4)):
                view(page)
        if user.user_id is None and self.rng.random() < 0.3:
            if not user.mobile:
                view(SIGNUP_PAGE)
            user.user_id = f"user-{self._uuid()[:8]}"
            add("track", event="Signed Up", properties={"plan": self.rng.choice(["free", "pro"])},
                context=self._context(user, current), **self._ids(user))
            later(0.2, 2)
            add("identify", traits={"email": f"{user.user_id}@example.com", "name": f"User {user.user_id[-4:]}",
                                    "created_at": None},  # the sign-up time, set when the visit is placed
                context=self._context(user, current), **self._ids(user))
            later(0.2, 2)
            add("alias", previous_id=user.anonymous_id, user_id=user.user_id, context=self._context(user, current),
                message_id=self._uuid())
            later(5, 30)
        depth = self.rng.choices(range(len(FUNNEL) + 1), weights=[30, 30, 15, 10, 8, 7])[0]
        product = f"sku-{self.rng.randint(1, 500)}"
        for n, step in enumerate(FUNNEL[:depth]):
            if not user.mobile and n in (0, 2):  # the product page, then the checkout page
                view(PRODUCT_PAGE if n == 0 else CHECKOUT_PAGE)
            properties = {"product_id": product, "price": 49.9, "currency": "EUR"}
            if step == "Order Completed":
                properties.update(order_id=f"order-{self._uuid()[:8]}", revenue=49.9)
            add("track", event=step, properties=properties, context=self._context(user, current), **self._ids(user))
            later(5, 60)
        if user.user_id and self.rng.random() < 0.1:
            add("group", group_id=self.rng.choice(COMPANIES), traits={"plan": "enterprise"},
                context=self._context(user, current), **self._ids(user))
        return calls

    def session(self, user: SimUser, start: dt.datetime | None = None) -> Iterator[str]:
        """One visit starting at ``start`` (ending by ``clock()`` at the latest); yields after each event
        so the caller can pace and stop."""
        calls = self._plan(user)
        now = self.clock()
        begin = min(start or now, now - dt.timedelta(seconds=calls[-1].offset))
        user.last_end = begin + dt.timedelta(seconds=calls[-1].offset)
        for call in calls:
            when = begin + dt.timedelta(seconds=call.offset)
            if call.method == "identify" and call.kwargs["traits"].get("created_at", "") is None:
                call.kwargs["traits"]["created_at"] = when.isoformat(timespec="seconds")
            getattr(self.client, call.method)(timestamp=when, **call.kwargs)
            self.summary.by_type[call.method] += 1
            yield call.method

    def _next_visit(self) -> tuple[int, dt.datetime]:
        """The user whose next visit comes first, and when. Once every planned visit would reach past
        now, newcomers arrive now instead (an existing user's visits must stay 30 minutes apart)."""
        now = self.clock()
        if self._due is None:
            self._plan_arrivals(None)
        assert self._due is not None
        if not self._due or self._due[0][0] > now - MAX_VISIT:
            self.users.append(self._new_user())
            return len(self.users) - 1, now
        return heapq.heappop(self._due)[::-1]

    def _schedule(self, index: int) -> None:
        """The user's next visit: at least the session gap after this one ended."""
        last_end = self.users[index].last_end
        assert self._due is not None and last_end is not None
        gap = SESSION_GAP + dt.timedelta(seconds=self.rng.expovariate(1 / self.mean_gap.total_seconds()))
        heapq.heappush(self._due, (last_end + gap, index))

    def run(self, *, events: int | None = None, duration: float | None = None, rate: float | None = None,
            on_event=None) -> Summary:
        if self._due is None:
            self._plan_arrivals(events)
        start = time.monotonic()
        sent = 0

        def done() -> bool:
            return (events is not None and sent >= events) or (
                duration is not None and time.monotonic() - start >= duration)

        while not done():
            index, when = self._next_visit()
            for _ in self.session(self.users[index], when):
                sent += 1
                if on_event:
                    on_event()
                if rate:
                    ahead = sent / rate - (time.monotonic() - start)
                    if ahead > 0:
                        time.sleep(ahead)
                if done():
                    break
            self._schedule(index)
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
    from clickstream.query import running  # local.json of a live `clickstream local`, or None

    state = running(data_dir)
    if state and str(state.get("admin_url", "")).endswith(ADMIN_QUERY_PATH):
        return state["admin_url"].removesuffix(ADMIN_QUERY_PATH)
    return DEFAULT_HOST


def check_endpoint(host: str, write_key: str, timeout: float = 5.0) -> None:
    """Ask the API for the write key's settings (the route analytics.js loads first) before sending.

    Without it an unreachable host costs the SDK's whole retry schedule before anything is said.
    A 401/403 means the key is refused; any other answer means something is listening.
    """
    import urllib.error
    import urllib.parse
    import urllib.request

    from clickstream import contract

    url = host.rstrip("/") + contract.SETTINGS_PATH.replace("{writeKey}", urllib.parse.quote(write_key, safe=""))
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
                   rate: float | None, seed: int | None, progress: bool = True, days: float = 7.0) -> Summary:
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
    sim = Simulator(client, users=users, seed=seed, days=days)
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
