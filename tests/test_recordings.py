"""The domain: lenient parsing of SignalWire's drifting wire types, and the status order."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, strategies as st

from service.domain.recordings import (CallbackEvent, Recording, is_terminal, needs_metadata, parse_int, parse_text,
                                parse_time, status_rank)

ANY = st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary()


@given(ANY)
def test_parsers_never_raise(value):
    assert parse_int(value) is None or isinstance(parse_int(value), int)
    assert parse_text(value) is None or isinstance(parse_text(value), str)
    parsed = parse_time(value)
    assert parsed is None or parsed.tzinfo is not None


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-01:00",
                                   datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-1)))])
def test_times_with_no_utc_equivalent_parse_to_none(value):
    assert parse_time(value) is None


@pytest.mark.parametrize("value, expected", [("94", 94), (94, 94), (94.0, 94), ("", None), (None, None),
                                             ("inf", None), ("1e309", None), ("x", None), (True, None)])
def test_parse_int(value, expected):
    assert parse_int(value) == expected


def test_recording_from_the_2018_response_and_the_current_spec_agree():
    # 2018 cassette: price a number, channels a string, no trim; current spec: price a string.
    old = Recording.from_api({"sid": "e4c7", "channel": "1", "channels": "1", "duration": 14, "price": 0.0,
                              "date_created": "Wed, 19 Dec 2018 16:28:16 +0000", "error_code": None,
                              "encryption_details": None, "status": "completed"})
    new = Recording.from_api({"sid": "e4c7", "channels": 1, "duration": "14", "price": "-0.0025", "error_code": 16102,
                              "trim": "do-not-trim", "status": "absent", "future_field": {"x": 1}})
    assert (old.channels, old.duration, old.price, old.trim) == (1, 14, "0.0", None)
    assert old.date_created == datetime(2018, 12, 19, 16, 28, 16, tzinfo=timezone.utc)
    assert old.extra == {"channel": "1", "encryption_details": None}
    assert (new.channels, new.duration, new.price, new.error_code) == (1, 14, "-0.0025", "16102")
    assert new.extra == {"future_field": {"x": 1}}


def test_recording_without_sid_is_rejected():
    with pytest.raises(ValueError):
        Recording.from_api({"status": "completed"})


def test_status_order_never_goes_backwards():
    assert status_rank(None) < status_rank("in-progress") < status_rank("completed")
    assert status_rank("completed") == status_rank("absent") > status_rank("queued")
    assert status_rank("some-new-status") < status_rank("completed")  # unknown never undoes terminal
    assert is_terminal("failed") and not is_terminal("stopped")
    assert not needs_metadata("in-progress") and needs_metadata("completed") and needs_metadata("failed")


def test_event_payload_round_trip():
    event = CallbackEvent(recording_sid="r", account_sid="a", status="completed", duration=3,
                          start_time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc), params={"A": "1"})
    assert CallbackEvent.from_payload(event.to_payload()) == event
