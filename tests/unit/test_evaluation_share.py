"""Which shards each of several evaluator processes takes (``retention evaluator --index K
--of N``), and the command line that starts them."""

from __future__ import annotations

import pytest

from retention.cli import build_parser
from streams.evaluation import shard_share


@pytest.mark.parametrize(
    ("count", "index", "of", "expected"),
    [
        (1, 0, 1, [0]),  # one evaluator, one shard: the default on a single Redis
        (12, 0, 1, list(range(12))),  # one evaluator takes every shard
        (12, 0, 3, [0, 3, 6, 9]),
        (12, 2, 3, [2, 5, 8, 11]),
        (5, 1, 2, [1, 3]),  # uneven: the first evaluator gets one more
        (1, 1, 2, []),  # more evaluators than shards: the extra one has none
        (0, 0, 1, []),
    ],
)
def test_a_share_is_the_shards_of_its_index_modulo_the_evaluators(
    count: int, index: int, of: int, expected: list[int]
) -> None:
    assert shard_share(count, index, of) == expected


@pytest.mark.parametrize("of", [1, 2, 3, 7, 12, 13])
def test_the_shares_of_all_evaluators_cover_every_shard_once(of: int) -> None:
    shares = [shard_share(12, index, of) for index in range(of)]
    assert sorted(shard for share in shares for shard in share) == list(range(12))


@pytest.mark.parametrize(("index", "of"), [(-1, 2), (2, 2), (0, 0), (3, 1)])
def test_an_index_outside_the_evaluators_is_refused(index: int, of: int) -> None:
    with pytest.raises(ValueError, match="index runs from 0"):
        shard_share(4, index, of)


def test_the_evaluator_takes_its_share_on_the_command_line() -> None:
    args = build_parser().parse_args(["evaluator", "--index", "1", "--of", "3"])
    assert (args.command, args.index, args.of, args.alive_file) == ("evaluator", 1, 3, None)
    alone = build_parser().parse_args(["evaluator"])
    assert (alone.index, alone.of) == (0, 1)


@pytest.mark.parametrize(("argv", "expected"), [([], None), (["--evaluators", "2"], 2)])
def test_up_starts_evaluators_when_asked(argv: list[str], expected: int | None) -> None:
    assert build_parser().parse_args(["up", *argv]).evaluators == expected


def test_an_evaluator_index_outside_its_share_exits_with_a_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = build_parser().parse_args(["evaluator", "--index", "2", "--of", "2"])
    assert args.func(args) == 2
    assert "--index from 0 to OF - 1" in capsys.readouterr().err
