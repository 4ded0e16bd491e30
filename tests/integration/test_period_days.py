"""Period boundaries are worked out in two places, for speed: by the worker for each
event's record (processors/windows.py) and by the batch script for a first activity that
moves (store/batch_periods.lua, from the local date's number). They must agree on every
day, week and month, whatever day weeks start on."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from redis.asyncio import Redis

from processors.windows import calendar_in_use, calendar_of, period_days

SCRIPT = Path(__file__).resolve().parents[2] / "store" / "batch_periods.lua"


def lua_function(name: str) -> str:
    text = SCRIPT.read_text()
    found = re.search(rf"^local function {name}\(.*?^end$", text, re.S | re.M)
    assert found, f"no {name} in {SCRIPT}"
    return found.group(0)


async def test_the_script_and_the_worker_cut_the_same_periods(
    redis: Redis, rng: random.Random
) -> None:
    # every day around month and year ends, leap days included, and random instants
    # from 1970 to 2099
    instants = [
        datetime(year, month, 1, tzinfo=UTC) + timedelta(days=shift, milliseconds=ms)
        for year in (1970, 1999, 2000, 2023, 2024, 2099)
        for month in range(1, 13)
        for shift in (-1, 0, 27, 28)
        for ms in (0, 86_399_999)
        if datetime(year, month, 1, tzinfo=UTC) + timedelta(days=shift)
        >= datetime(1970, 1, 1, tzinfo=UTC)
    ]
    span = int(datetime(2099, 12, 31, tzinfo=UTC).timestamp() * 1000)
    times = [int(i.timestamp() * 1000) for i in instants]
    times += [rng.randrange(span) for _ in range(2000)]
    script = (
        "local function num(x) if x == 0 then return '0' end "
        "return string.format('%.0f', x) end\n"
        "local week_start = tonumber(ARGV[1])\n"
        + lua_function("periods_of")
        + "\nlocal out = {}\nfor i = 2, #ARGV do\n"
        "  local p = periods_of(math.floor(tonumber(ARGV[i]) / 86400000))\n"
        "  out[#out + 1] = p.d .. ',' .. p.w .. ',' .. p.m\nend\nreturn out\n"
    )
    for week_start in (0, 3, 6):
        with calendar_in_use(calendar_of("UTC", week_start)):
            want = [",".join(map(str, period_days(t))) for t in times]
        got = await redis.eval(script, 0, week_start, *times)
        assert got == want, week_start
