"""Progress lines in job logs: count, rate and time left, not a bar."""

from __future__ import annotations

import io

from xmmsr.progress import progress


def test_log_lines_give_count_rate_and_time_left():
    log = io.StringIO()
    assert list(progress(range(5), "simulate 20 ks 1x", stream=log, interval_s=0.0)) == list(range(5))
    lines = log.getvalue().splitlines()
    assert len(lines) == 5 and lines[0].startswith("simulate 20 ks 1x: 1/5 src, ")
    assert "src/s" in lines[0] and "s left" in lines[0] and "left" not in lines[-1]


def test_at_most_one_line_per_interval_besides_first_and_last():
    log = io.StringIO()
    list(progress(iter(range(1000)), "bin", "image", stream=log, interval_s=3600.0))
    lines = log.getvalue().splitlines()
    assert lines == [lines[0]] and lines[0].startswith("bin: 1 image, ")   # no total known: no time left
