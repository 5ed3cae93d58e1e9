"""lacme.master.renewal (the decision rules) and lacme.master.state (their memory)."""

from __future__ import annotations

import json
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lacme.master import renewal
from lacme.master.renewal import (
    DAY,
    Lifetime,
    Window,
    check_interval,
    choose_moment,
    decide,
    decide_min_days,
    usable_window,
)
from lacme.master.state import Entry, StateStore, default_directory, dump_state, parse_state

T0 = 1_900_000_000.0


def life(seconds: float) -> Lifetime:
    return Lifetime(T0, T0 + seconds)


# -- without ARI: a share of the lifetime ------------------------------------------

@pytest.mark.parametrize("length, share", [(90 * DAY, 2 / 3), (10 * DAY, 2 / 3),
                                           (6 * DAY, 1 / 2), (120, 1 / 2)])
def test_without_ari_renews_after_two_thirds_or_half_for_short(length, share):
    lifetime = life(length)
    assert not decide(lifetime, None, T0 + share * length - 1).due
    due = decide(lifetime, None, T0 + share * length + 1)
    assert due.due and due.renew_at == pytest.approx(T0 + share * length)


def test_missing_or_expired_certificate_is_due():
    assert decide(None, None, T0).due
    assert decide(life(100), T0 + 500, T0 + 101).reason == "expired"


def test_min_days_keeps_the_manual_meaning():
    lifetime = life(90 * DAY)
    assert not decide_min_days(lifetime, 21, T0 + 68 * DAY).due  # 22 days left
    assert decide_min_days(lifetime, 21, T0 + 70 * DAY).due  # 20 days left
    assert decide_min_days(lifetime, -1, T0).due
    assert not decide_min_days(lifetime, 0, T0 + 89 * DAY).due
    assert decide_min_days(None, 21, T0).due


# -- ARI: the chosen moment --------------------------------------------------------

def test_chosen_moment_decides_when_known():
    lifetime = life(90 * DAY)
    chosen = T0 + 40 * DAY  # earlier than 2/3: the CA's word wins
    assert not decide(lifetime, chosen, chosen - 1).due
    assert decide(lifetime, chosen, chosen).due


def test_narrow_window_before_three_quarters_is_obeyed():
    lifetime = life(90 * DAY)
    window = Window(T0 + 59 * DAY, T0 + 61 * DAY)  # Let's Encrypt's kind of window
    assert usable_window(window, lifetime, T0) == window


def test_window_in_the_past_means_now():
    lifetime = life(600)
    now = T0 + 100
    assert choose_moment(Window(T0 - 3600, T0 - 3599), lifetime, now) == now


def test_wide_window_is_clamped_to_the_margin():
    lifetime = life(120)  # Pebble: its +-24 h window covers the whole lifetime
    usable = usable_window(Window(T0, T0 + 120), lifetime, T0, period=10)
    bound = T0 + 120 - 30 - 10  # a quarter of the lifetime and one timer period
    assert usable == Window(bound - 120 / 32, bound)


def test_window_starting_after_the_margin_is_the_bound():
    lifetime = life(800)
    usable = usable_window(Window(T0 + 750, T0 + 790), lifetime, T0, period=50)
    assert usable == Window(T0 + 550, T0 + 550)


def test_timer_too_slow_for_the_lifetime_renews_at_half():
    # an hourly timer and a one-hour certificate: the margin cannot be kept
    lifetime = life(3600)
    assert renewal.margin_bound(lifetime, 3600) == T0 + 1800
    assert decide(lifetime, T0 + 3500, T0 + 1801, 3600).due


def test_moment_chosen_past_the_margin_by_an_older_rule_is_pulled_in():
    lifetime = life(6 * DAY)
    old_choice = lifetime.at(0.85)  # the former [3/4, 7/8] narrowing
    bound = renewal.margin_bound(lifetime, 3600)
    assert not decide(lifetime, old_choice, bound - 1, 3600).due
    due = decide(lifetime, old_choice, bound, 3600)
    assert due.due and due.renew_at == bound and "margin" in due.reason


def test_without_ari_the_margin_bounds_the_lifetime_rule():
    # 60-s certificates on a 20-s timer: 1/2 would leave 30 s, fewer than 15 + 20
    lifetime = life(60)
    assert decide(lifetime, None, T0 + 29, 20).renew_at == T0 + 30  # the floor: half
    lifetime = life(90 * DAY)  # 2/3 leaves 30 days: more than 22.5 days + 1 h
    assert decide(lifetime, None, T0, 3600).renew_at == pytest.approx(T0 + 60 * DAY)


lengths = st.floats(min_value=60, max_value=400 * DAY)


@settings(max_examples=500, deadline=None)
@given(length=lengths, start=st.floats(min_value=-1.5, max_value=1.5),
       width=st.floats(min_value=1e-4, max_value=2), now=st.floats(min_value=0, max_value=1.2),
       period_share=st.floats(min_value=0, max_value=0.25), seed=st.integers(0, 2 ** 32))
def test_margin_always_holds_and_windows_inside_it_are_untouched(
        length, start, width, now, period_share, seed):
    lifetime = life(length)
    period = length * period_share  # a timer that can keep the margin: period <= 1/4
    window = Window(T0 + start * length, T0 + (start + width) * length)
    at = T0 + now * length
    chosen = choose_moment(window, lifetime, at, random.Random(seed), period=period)
    decision = decide(lifetime, chosen, at, period)
    # whatever the window, the moment lacme renews at leaves 1/4 + one period
    if decision.renew_at is None:  # expired: now
        assert decision.due and at >= lifetime.not_after
    else:
        assert decision.renew_at <= lifetime.not_after - length / 4 - period + 1e-6 * length
    if window.end <= at:
        assert chosen == at
    elif window.end <= lifetime.not_after - length / 4 - period:
        # wholly inside the bound: followed as before
        assert window.start - 1e-6 <= chosen <= window.end + 1e-6
        assert decide(lifetime, chosen, chosen, period).due
        assert not decide(lifetime, chosen, chosen - 1e-3 * length, period).due or \
            chosen - 1e-3 * length < window.start
    else:  # clamped: in the window's part before the bound, or the bound itself
        bound = renewal.margin_bound(lifetime, period)
        assert chosen <= bound + 1e-6
        assert chosen >= min(window.start, bound) - 1e-6 or chosen == at


@settings(max_examples=300, deadline=None)
@given(length=lengths, period_share=st.floats(min_value=0, max_value=0.25),
       chosen=st.floats(min_value=0, max_value=1), now=st.floats(min_value=0, max_value=1))
def test_decide_never_waits_past_the_margin(length, period_share, chosen, now):
    """Even a moment stored by another rule (or another run-interval)."""
    lifetime, period = life(length), length * period_share
    decision = decide(lifetime, T0 + chosen * length, T0 + now * length, period)
    bound = lifetime.not_after - length / 4 - period
    if decision.renew_at is None:  # expired
        assert decision.due and now * length >= length - 1
        return
    assert decision.renew_at <= bound + 1e-6 * length
    assert decision.due == (T0 + now * length >= decision.renew_at)


@pytest.mark.parametrize("length, period", [(60, 2), (120, 1), (6 * DAY, 3600),
                                            (90 * DAY, 3600)])
def test_wide_window_stays_under_one_point_four_five_renewals_per_lifetime(length, period):
    lifetime = life(length)
    rng = random.Random(7)
    moments = [choose_moment(Window(T0, T0 + length), lifetime, T0, rng, period=period)
               for _ in range(2000)]
    # the first run after the moment renews: half a period later on average
    used = sum(m - T0 for m in moments) / len(moments) + period / 2
    assert length / used <= 1.45
    assert max(moments) <= T0 + length * 3 / 4 - period + 1e-6  # the margin stays free


# -- ARI: when to ask again ----------------------------------------------------------

def test_retry_after_is_honoured_but_capped_at_a_hundredth_of_the_lifetime():
    assert check_interval(life(90 * DAY), 6 * 3600) == 6 * 3600
    assert check_interval(life(6 * DAY), 6 * 3600) == pytest.approx(6 * DAY / 100)
    assert check_interval(life(120), 6 * 3600) == pytest.approx(1.2)
    assert check_interval(life(90 * DAY), None) == renewal.DEFAULT_RETRY_AFTER
    assert check_interval(life(90 * DAY), -5) == 0


# -- the state file -------------------------------------------------------------------

def test_state_round_trips_and_merges_entries(tmp_path):
    store = StateStore(str(tmp_path / "state"))
    a = Entry("www", "/srv/www.pem", cert_id="x.y", chosen=T0, ari=True, next_check=T0 + 5)
    b = Entry("mail", "/srv/mail.pem", last_outcome="failed", last_error="boom")
    assert store.save([a])
    assert store.save([b])  # a second run for another section loses nothing
    loaded = store.load()
    assert loaded[a.key].chosen == T0 and loaded[a.key].ari is True
    assert loaded[b.key].last_error == "boom"
    assert oct((tmp_path / "state" / "renewal.json").stat().st_mode & 0o777) == "0o644"


def test_state_damaged_file_or_fields_are_forgotten_not_fatal(tmp_path):
    (tmp_path / "renewal.json").write_text("{not json")
    assert StateStore(str(tmp_path)).load() == {}
    raw = {"entries": [{"section": "www", "path": "/p", "chosen": "soon", "ari": 1,
                        "next_check": T0}, {"section": 3}]}
    entries = parse_state(json.dumps(raw))
    assert list(entries) == ["[www] /p"]
    entry = entries["[www] /p"]
    assert entry.chosen is None and entry.ari is None and entry.next_check == T0


def test_state_entry_forgets_window_of_another_certificate():
    entry = Entry("www", "/p", cert_id="a.1", not_after=T0, window_start=T0 - 9, chosen=T0 - 5,
                  next_check=T0, last_outcome="installed")
    assert entry.for_certificate("a.1", T0 - 100, T0) is entry
    other = entry.for_certificate("a.2", T0, T0 + 100)
    assert other.chosen is None and other.window_start is None and other.next_check is None
    assert other.last_outcome == "installed"


def test_state_unwritable_directory_is_a_warning(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert not StateStore(str(blocker / "state")).save([Entry("www", "/p")])
    assert "cannot save the renewal state" in caplog.text


def test_state_directory_precedence(monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/lacme:/other")
    assert default_directory("/etc/conf-says") == "/etc/conf-says"
    assert default_directory(None) == "/var/lib/lacme"
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("XDG_STATE_HOME", "/home/u/.state")
    expected = "/var/lib/lacme" if os.geteuid() == 0 else "/home/u/.state/lacme"
    assert default_directory(None) == expected


def full_entry(section: str = "s", path: str = "/p") -> Entry:
    """An entry with every field set."""
    text = {"cert_id", "explanation_url", "last_outcome", "last_error", "replaced", "key_file",
            "key_spki", "cafile_check", "failed_config"}
    flags = {"ari", "cafile_ok"}
    return Entry(section, path, **{name: ("x" if name in text else False if name in flags else T0)
                                   for name in Entry._fields[2:]})


def test_entry_fields_all_survive_json():
    full = full_entry()
    assert parse_state(dump_state({full.key: full}))[full.key] == full


FLOATS = st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False),
                   st.integers(-2**53, 2**53))
TEXTS = st.one_of(st.none(), st.text(max_size=20))
ENTRIES = st.builds(
    Entry, section=st.text(max_size=12), path=st.text(max_size=20), cert_id=TEXTS,
    not_before=FLOATS, not_after=FLOATS, ari=st.one_of(st.none(), st.booleans()),
    window_start=FLOATS, window_end=FLOATS, chosen=FLOATS, explanation_url=TEXTS,
    next_check=FLOATS, last_check=FLOATS, last_attempt=FLOATS, last_outcome=TEXTS,
    last_error=TEXTS, last_success=FLOATS, replaced=TEXTS,
    updated=st.floats(allow_nan=False, allow_infinity=False))


@given(st.lists(ENTRIES, max_size=30))
@settings(max_examples=200, deadline=None)
def test_state_dump_and_parse_round_trip(entries):
    state = {e.key: e for e in entries}
    text = dump_state(state)
    assert parse_state(text) == state
    assert json.loads(text)["version"] == 1
    assert len(text.splitlines()) == (len(state) + 2 if state else 1)  # one entry per line


def test_state_with_thousands_of_entries_round_trips_through_the_store(tmp_path):
    store = StateStore(str(tmp_path))
    entries = [full_entry(f"s{i}", f"/srv/{i}.pem").replace(last_error=f"e\u00e9\n{i}")
               for i in range(3000)]
    assert store.save(entries)
    loaded = StateStore(str(tmp_path)).load()  # another run: parsed from the file
    assert len(loaded) == 3000
    for entry in entries:
        assert loaded[entry.key].replace(updated=entry.updated) == entry
    assert store.load() == loaded  # the store's own copy of what it wrote


def test_state_store_sees_another_writer(tmp_path):
    mine, theirs = StateStore(str(tmp_path)), StateStore(str(tmp_path))
    assert mine.save([Entry("a", "/a", chosen=T0)])
    assert theirs.save([Entry("b", "/b")])  # another run, meanwhile
    assert sorted(mine.load()) == ["[a] /a", "[b] /b"]
    assert mine.save([Entry("a", "/a", chosen=T0 + 1)])  # merges, does not lose b
    loaded = theirs.load()
    assert sorted(loaded) == ["[a] /a", "[b] /b"] and loaded["[a] /a"].chosen == T0 + 1
    loaded.clear()  # callers own the dictionary they get
    assert len(theirs.load()) == 2


def test_state_file_of_the_previous_format_is_read(tmp_path):
    entry = Entry("www", "/p", chosen=T0, ari=True)
    old = json.dumps({"version": 1, "entries": [entry.asdict()]}, indent=1, sort_keys=True)
    (tmp_path / "renewal.json").write_text(old)
    assert StateStore(str(tmp_path)).load() == {entry.key: entry}
