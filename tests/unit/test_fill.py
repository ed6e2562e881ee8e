"""Fill: its outcomes, the one wait primitive, what a reader may send, whose refusal it was."""

from __future__ import annotations

import asyncio
from pathlib import Path

from proxy.errors import CacheUnwritable, CredentialsRefused, UpstreamError
from proxy.fill import Fill, Outcome
from proxy.upstream import fingerprint


def _fill(credential: str = "") -> Fill:
    return Fill("ab" * 32, "pkg-1.0.tar.gz", Path("/nonexistent"), credential=credential)


def test_outcomes_name_each_end() -> None:
    running = _fill()
    assert running.outcome is Outcome.RUNNING
    done = _fill()
    done.mark_started(3)
    done.finish(Path("/blob"))
    assert done.outcome is Outcome.DONE
    adopted = _fill()
    adopted.finish(Path("/blob"))
    assert adopted.outcome is Outcome.ADOPTED
    unwritable = _fill()
    unwritable.fail(CacheUnwritable("disk full"))
    assert unwritable.outcome is Outcome.UNWRITABLE
    failed = _fill()
    failed.fail(UpstreamError("bad"))
    assert failed.outcome is Outcome.FAILED


def test_a_reader_gets_the_last_byte_only_once_verified() -> None:
    fill = _fill()
    fill.mark_started(4)
    fill.advance(4)
    assert fill.readable_limit() == 3
    fill.finish(Path("/blob"))
    assert fill.readable_limit() == 4


async def test_wait_until_wakes_at_each_step_until_the_predicate_holds() -> None:
    fill = _fill()
    reached = asyncio.create_task(fill.wait_until(lambda f: f.written >= 2))
    await asyncio.sleep(0)
    fill.mark_started(None)
    fill.advance(1)
    await asyncio.sleep(0)
    assert not reached.done()
    fill.advance(1)
    await asyncio.wait_for(reached, 1)


async def test_headers_known_and_ended() -> None:
    fill = _fill()
    headers = asyncio.create_task(fill.headers_known())
    ended = asyncio.create_task(fill.ended())
    await asyncio.sleep(0)
    fill.mark_started(10)
    await asyncio.wait_for(headers, 1)
    assert not ended.done()
    fill.fail(UpstreamError("cut"))
    await asyncio.wait_for(ended, 1)
    # Already true: no wait at all.
    await asyncio.wait_for(fill.ended(), 1)


def test_a_refusal_before_a_byte_is_the_starters_alone() -> None:
    fill = _fill(credential=fingerprint("Bearer starter"))
    fill.fail(CredentialsRefused("no"))
    assert fill.refused_only_its_starter("Bearer joiner")
    assert not fill.refused_only_its_starter("Bearer starter")
    started = _fill(credential=fingerprint("Bearer starter"))
    started.mark_started(1)
    started.fail(CredentialsRefused("no"))
    assert not started.refused_only_its_starter("Bearer joiner")


def test_a_restart_cuts_only_readers_sent_a_byte_the_new_bytes_contradict() -> None:
    fill = _fill()
    fill.mark_started(100)
    fill.advance(100)
    assert fill.restart() == 100
    assert fill.written == 0 and not fill.started
    fill.mark_started(100)
    assert not fill.must_cut(0, 99)
    fill.diverged_at(40)
    assert fill.must_cut(0, 41)
    assert not fill.must_cut(0, 40)
    # A reader that joined after the restart was only ever sent the new bytes.
    assert not fill.must_cut(1, 99)


def test_a_restart_with_another_length_cuts_every_earlier_reader() -> None:
    fill = _fill()
    fill.mark_started(100)
    fill.restart()
    fill.mark_started(120)
    assert fill.must_cut(0, 0)
    assert not fill.must_cut(1, 0)
