"""The simulator: realistic, repeatable traffic through the official SDK into the warehouse."""

from __future__ import annotations

from clickstream.simulate import Simulator, run_simulation
from tests.conftest import KEY


class Recorder:
    """Stands in for the SDK client: records every call."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, method):
        return lambda **kwargs: self.calls.append((method, kwargs))


def test_same_seed_same_events_and_realistic_shapes():
    a, b = Recorder(), Recorder()
    Simulator(a, users=20, seed=42).run(events=500)
    Simulator(b, users=20, seed=42).run(events=500)
    assert a.calls == b.calls and len(a.calls) == 500
    c = Recorder()
    Simulator(c, users=20, seed=43).run(events=500)
    assert c.calls != a.calls
    kinds = {m for m, _ in a.calls}
    assert {"page", "track", "identify", "alias"} <= kinds
    pages = [kw for m, kw in a.calls if m == "page"]
    assert all(kw["context"]["page"]["url"].startswith("https://") and kw["context"]["userAgent"] for kw in pages)
    # a user keeps one anonymous id, and sign-up aliases it to the new user id
    for m, kw in a.calls:
        if m == "alias":
            earlier = [k for mm, k in a.calls if mm == "page" and k["anonymous_id"] == kw["previous_id"]]
            assert earlier or any(k.get("anonymous_id") == kw["previous_id"] for _, k in a.calls)
    funnel = [kw["event"] for m, kw in a.calls if m == "track"]
    assert "Product Viewed" in funnel and len({kw["message_id"] for _, kw in a.calls if "message_id" in kw}) == 500


def test_simulated_events_arrive_in_the_warehouse(live_pipeline):
    summary = run_simulation(live_pipeline.url, KEY, users=10, events=300, duration=None, rate=None, seed=1,
                             progress=False)
    assert summary.events == 300 and summary.errors == 0
    live_pipeline.wait_loaded()
    rows = live_pipeline.query("SELECT type, COUNT(*) AS n FROM clickstream.events GROUP BY type")
    assert {r["type"]: r["n"] for r in rows} == dict(summary.by_type)
    assert live_pipeline.query("SELECT COUNT(*) AS n FROM clickstream.rejected")[0]["n"] == 0
