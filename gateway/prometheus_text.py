"""Prometheus's text exposition format (0.0.4) for one registry, byte for byte what prometheus_client's
`generate_latest` writes, at a fraction of its CPU.

`generate_latest` checks and escapes every metric and label name of every sample on every scrape (regular
expressions and string copies on every line); that was 70% of a `/metrics` request's CPU in the gateway's
profile. A scrape loop, or a page that polls `/metrics`, pays it over and over while the same two cores decode.
Here the parts that only depend on names (a family's HELP and TYPE lines, a sample's name with its labels) are
formatted once and kept; a scrape formats only the values, and only of the collectors that changed since the last
one (`render`'s versions: the request metrics change when requests do, the live gauges are read every time).
Names need no escaping: the gateway's metric and label names are all plain Prometheus names
(tests/unit/test_prometheus_text.py checks the output against `generate_latest`'s, byte for byte).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

KEPT_MAX = 4096  # formatted names kept; labels are bounded (see gateway/metrics.py), so this is only a backstop
OM_SUFFIXES = ("_created", "_gsum", "_gcount")  # OpenMetrics samples that the text format moves to gauges
TYPE_NAMES = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram", "unknown": "untyped"}


class TextExposition:
    """`render([registry])` is `generate_latest(registry)`. Scrapes may run in several threads at once: the kept
    names and texts are only read and added to (single dict operations), and one that is lost is only formatted
    again."""

    def __init__(self) -> None:
        self._headers: dict[tuple[str, str, str], str] = {}
        self._names: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
        self._texts: dict[int, tuple[int, str]] = {}  # id(collector) → (its version, its text)

    def render(self, collectors: Iterable[Any], versions: Mapping[int, int] | None = None) -> bytes:
        """A registry's text from its `collectors`, in the order they were registered (a `CollectorRegistry` is a
        collector too). A collector with a version (`versions`, by `id`, a number its owner raises after every
        change to it) keeps its text while the number stays; the others are collected every time."""
        versions = versions or {}
        output = []
        for collector in collectors:
            version = versions.get(id(collector))
            kept = self._texts.get(id(collector))
            if version is None or kept is None or kept[0] != version:
                kept = (version, self._text(collector.collect()))
                if version is not None:
                    self._texts[id(collector)] = kept
            output.append(kept[1])
        return "".join(output).encode("utf-8")

    def _text(self, metrics: Iterable[Metric]) -> str:
        output: list[str] = []
        for metric in metrics:
            moved: dict[str, list[str]] = {}
            output.append(self._header(metric.name, metric.type, metric.documentation))
            for sample in metric.samples:
                suffix = sample.name[len(metric.name):]
                if suffix in OM_SUFFIXES and sample.name.startswith(metric.name):
                    moved.setdefault(suffix, []).append(self._line(sample))
                else:
                    output.append(self._line(sample))
            for suffix, lines in sorted(moved.items()):
                output.append(self._header(metric.name + suffix, "gauge", metric.documentation))
                output.extend(lines)
        return "".join(output)

    def _header(self, name: str, kind: str, documentation: str) -> str:
        key = (name, kind, documentation)
        header = self._headers.get(key)
        if header is None:
            header = self._keep(self._headers, key, _format_header(name, kind, documentation))
        return header

    def _line(self, sample: Sample) -> str:
        key = (sample.name, tuple(sample.labels.items()))
        name = self._names.get(key)
        if name is None:
            name = self._keep(self._names, key, _format_sample_name(sample))
        if sample.timestamp is None:
            return f"{name} {floatToGoString(sample.value)}\n"
        return f"{name} {floatToGoString(sample.value)} {int(float(sample.timestamp) * 1000):d}\n"

    @staticmethod
    def _keep(kept: dict, key: tuple, value: str) -> str:
        if len(kept) >= KEPT_MAX:
            kept.clear()
        kept[key] = value
        return value


def _format_header(name: str, kind: str, documentation: str) -> str:
    """HELP and TYPE lines as `generate_latest` writes them (a counter's name gains `_total`, an info's
    `_info`)."""
    name += {"counter": "_total", "info": "_info"}.get(kind, "")
    doc = documentation.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {doc}\n# TYPE {name} {TYPE_NAMES.get(kind, kind)}\n"


def _format_sample_name(sample: Sample) -> str:
    """The sample's name and sorted labels, label values escaped as the format asks."""
    if not sample.labels:
        return sample.name
    labels = ",".join(f'{k}="{_escape_label_value(v)}"' for k, v in sorted(sample.labels.items()))
    return f"{sample.name}{{{labels}}}"


def _escape_label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')
