"""The Markdown table of a bench run: medians, spreads, ratios and the performance targets."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from bench.peers import CEILING_IN_FLIGHT as PUBLISH_IN_FLIGHT

__all__ = ["Samples", "median_of", "render_table"]

# item -> contender -> one result per round
Samples = dict[str, dict[str, list[dict[str, Any]]]]
MB = 1024 * 1024
RSS_TARGET_MB = 150
P99_TARGET_MS = 20


def _values(samples: Samples, item: str, name: str, key: str) -> list[float]:
    return [float(result[key]) for result in samples.get(item, {}).get(name, []) if key in result]


def median_of(samples: Samples, item: str, name: str, key: str) -> float | None:
    values = _values(samples, item, name, key)
    return statistics.median(values) if values else None


def _fills(samples: Samples) -> list[float]:
    """Every fill of a consume run published raw: the publish ceiling's samples."""
    return [
        float(result["fill_messages_per_second"])
        for runs in samples.get("consume", {}).values()
        for result in runs
    ]


def _cell(values: list[float], unit: Callable[[float], str] = lambda v: f"{v:,.0f}") -> str:
    if not values:
        return "-"
    median = unit(statistics.median(values))
    if len(values) == 1:
        return median
    return f"{median} ({unit(min(values))}-{unit(max(values))})"


def _ratio(numerator: float | None, denominator: float | None) -> str:
    if not numerator or not denominator:
        return "-"
    return f"{numerator / denominator:.2f}"


def paired_ratios(samples: Samples, item: str, first: str, second: str) -> list[float]:
    """first / second within each round: the two ran minutes apart, not a whole run apart, so
    a neighbour's load that comes and goes cancels out better than in a ratio of medians."""
    runs = samples.get(item, {})
    # Results before rounds were recorded are in round order.
    by_round = {
        r.get("round", index + 1): r["events_per_second"]
        for index, r in enumerate(runs.get(second, []))
    }
    return [
        r["events_per_second"] / by_round[r.get("round", index + 1)]
        for index, r in enumerate(runs.get(first, []))
        if by_round.get(r.get("round", index + 1))
    ]


def _paired(samples: Samples, item: str, first: str, second: str) -> tuple[str, float | None]:
    """The median of the per-round ratios, with their spread, and the median alone."""
    ratios = paired_ratios(samples, item, first, second)
    if not ratios:
        return "-", None
    return _cell(ratios, lambda v: f"{v:.2f}"), statistics.median(ratios)


def _latencies(sample: dict[str, Any]) -> str:
    return (
        f"{sample['latency_p50_ms']:.1f} / {sample['latency_p99_ms']:.1f} / "
        f"{sample['latency_max_ms']:.1f}"
    )


def _verdict(value: float | None, target: float, *, at_least: bool) -> str:
    if value is None:
        return "not measured"
    if (value >= target) if at_least else (value <= target):
        return "met"
    if not at_least and value > 2 * target:
        return f"missed: {value / target:,.0f} x the target"
    missed = (1 - value / target) if at_least else (value / target - 1)
    return f"missed by {missed:.0%}"


def render_table(samples: Samples, settings: dict[str, Any], host: dict[str, Any]) -> str:
    def cell(item: str, name: str, key: str = "events_per_second") -> str:
        return _cell(_values(samples, item, name, key))

    def med(item: str, name: str, key: str = "events_per_second") -> float | None:
        return median_of(samples, item, name, key)

    single_vs_fs, single_vs_fs_median = _paired(samples, "single", "conveyor", "faststream")
    consume_vs_fs, consume_vs_fs_median = _paired(samples, "consume", "conveyor", "faststream")
    consume_vs_ceiling, consume_vs_ceiling_median = _paired(
        samples, "consume", "conveyor", "ceiling"
    )
    fills = _fills(samples)
    publish_ceiling = statistics.median(fills) if fills else None
    single, batch = med("single", "conveyor"), med("batch", "conveyor")
    columns = (
        "#", "figure", "conveyor (defaults: SQLite store)", "conveyor, no store",
        "conveyor, PostgreSQL store", "FastStream",
        "naive aiohttp + aio-pika", "raw aio-pika ceiling", "conveyor / FastStream",
        "conveyor / ceiling", "store cost (conveyor / no store)", "target",
    )  # fmt: skip
    rows = [
        _row(columns),
        _row(("---",) * len(columns)),
        _row(("1", f"publish, msgs/s (confirms, {PUBLISH_IN_FLIGHT} in flight)", "", "", "",
              "", "", _cell(fills))),
        _row(("1", "consume, msgs/s", "", "", "", "", "", cell("consume", "ceiling"))),
        _row((
            "2", "single-event ingest, events/s", cell("single", "conveyor"),
            cell("single", "conveyor-no-store"), cell("single", "conveyor-postgres"),
            cell("single", "faststream"),
            cell("single", "naive"), _cell(fills), single_vs_fs,
            _ratio(single, publish_ceiling),
            _paired(samples, "single", "conveyor", "conveyor-no-store")[0],
            f">= 1.5 x FastStream: {_verdict(single_vs_fs_median, 1.5, at_least=True)}",
        )),
    ]  # fmt: skip
    for name in sorted(samples.get("single-workers", {})):
        scaling = _paired(samples, "single-workers", name, "conveyor-workers-1")[0]
        rows.append(_row((
            "2", f"single-event ingest, `serve --workers {name.rsplit('-', 1)[1]}`",
            cell("single-workers", name), "", "", "", "", "", "", "", "",
            f"scales with N: {scaling} x N = 1",
        )))  # fmt: skip
    rows += [
        _row((
            "3", "batch ingest (100 a request), events/s", cell("batch", "conveyor"),
            cell("batch", "conveyor-no-store"), "", "", "", _cell(fills), "",
            _ratio(batch, publish_ceiling),
            _paired(samples, "batch", "conveyor", "conveyor-no-store")[0],
            f">= 2 x ceiling: {_verdict(_quotient(batch, publish_ceiling), 2, at_least=True)}",
        )),
        _row((
            "4", "consume (no-op handler), events/s", cell("consume", "conveyor"),
            cell("consume", "conveyor-no-store"), cell("consume", "conveyor-postgres"),
            cell("consume", "faststream"), "", cell("consume", "ceiling"), consume_vs_fs,
            consume_vs_ceiling,
            _paired(samples, "consume", "conveyor", "conveyor-no-store")[0],
            (f">= 1.5 x FastStream: {_verdict(consume_vs_fs_median, 1.5, at_least=True)}; "
             f">= 0.8 x ceiling: {_verdict(consume_vs_ceiling_median, 0.8, at_least=True)}"),
        )),
    ]  # fmt: skip
    latency = samples.get("latency", {})
    floor = next(iter(latency.get("ceiling", [])), None)
    for name, how in (
        ("conveyor", ""),
        ("conveyor-split", ", split: ingress + worker on PostgreSQL"),
    ):
        for first in latency.get(name, [])[:1]:
            verdict = _verdict(first["latency_p99_ms"], P99_TARGET_MS, at_least=False)
            rows.append(_row((
                "5",
                (f"ingest to handler start at {first['rate']:,.0f} events/s{how}, "
                 "ms p50 / p99 / max"),
                _latencies(first), "", "", "", "", _latencies(floor) if floor else "", "", "",
                "",
                f"p99 <= {P99_TARGET_MS} ms: {verdict}",
            )))  # fmt: skip
    for name, what in (
        ("worker-backlog", f"peak RSS, worker draining {settings['backlog']:,} events, MB"),
        ("ingress-1000-connections", "peak RSS, ingress under 1,000 connections, MB"),
    ):
        rss = med("memory", name, "peak_rss_bytes")
        verdict = _verdict(rss / MB if rss else None, RSS_TARGET_MB, at_least=False)
        rows.append(_row((
            "6", what, _cell(_values(samples, "memory", name, "peak_rss_bytes"), _mb),
            "", "", "", "", "", "", "", "", f"<= {RSS_TARGET_MB} MB: {verdict}",
        )))  # fmt: skip
    notes = [
        (
            f"Machine: {host['nproc']} cores, Python {host['python']}, RabbitMQ "
            f"{host['rabbitmq']}, load average at start {' '.join(host['loadavg'])}."
        ),
        (
            f"Medians over {settings['rounds']} interleaved rounds, (min-max) beside them; "
            "ratios between contenders of one comparison are medians of per-round ratios; "
            f"{settings['seconds']:g} s of load per ingest run after 1 s of warm-up, "
            f"{settings['connections']} keep-alive connections for single events, "
            f"{settings['batch_connections']} for batches; {settings['event_bytes']} B events; "
            f"consume drains {settings['consume_events']:,} events, prefetch "
            f"{settings['prefetch']}."
        ),
        (
            "conveyor runs with its defaults (SQLite store in a temporary file, JSON logs at "
            "info, default subscription settings) in the `ingress` role for 2, 3, 6b, `worker` "
            "for 4, 6a, `all` for 5; 'no store' replaces the store with one that remembers "
            "nothing; 'PostgreSQL store' gives it a database of its own on the local server."
        ),
    ]
    for item in ("single", "batch", "consume"):
        ratio, _ = _paired(samples, item, "conveyor-uvloop", "conveyor")
        if ratio != "-":
            rates = _cell(_values(samples, item, "conveyor-uvloop", "events_per_second"))
            notes.append(
                f"{item}: conveyor on uvloop {rates} events/s, {ratio} x conveyor on asyncio's loop"
            )
    notes += _errors(samples)
    return "\n".join(rows) + "\n\n" + "\n".join(f"- {n}" for n in notes)


def _row(cells: tuple[str, ...], width: int = 12) -> str:
    return "| " + " | ".join(cells + ("",) * (width - len(cells))) + " |"


def _mb(value: float) -> str:
    return f"{value / MB:,.0f}"


def _quotient(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return numerator / denominator


def _errors(samples: Samples) -> list[str]:
    """Any answer but 202 in an ingest run: the figure counts only 202s, but say so."""
    notes = []
    for item, runs in samples.items():
        for name, results in runs.items():
            for result in results:
                other = {k: v for k, v in result.get("statuses", {}).items() if k != "202"}
                if other:
                    notes.append(f"{item} / {name}: answers other than 202: {other}")
    return notes


if __name__ == "__main__":
    import sys

    import orjson

    # Re-render a run's table: python -m bench.report bench/results/<timestamp>.json
    document = orjson.loads(open(sys.argv[1], "rb").read())  # noqa: SIM115, PTH123 - a one-off read
    print(render_table(document["samples"], document["settings"], document["machine"]))
