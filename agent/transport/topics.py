"""The one place that knows topic names.

Inputs are MQTT filters with exactly one ``+``: the level it matches is the asset id, so
plants keep their own topic trees (``plant/line3/+/vibration``) and the agent adapts by
configuration. Outputs hang under one prefix so a dashboard subscribes to
``<prefix>/#`` and sees everything one fleet says.
"""

from __future__ import annotations

from dataclasses import dataclass

SHARED_PREFIX = "$share/"


@dataclass(frozen=True, slots=True)
class InputFilter:
    """A subscription filter and where in it the asset id sits."""

    filter: str
    kind: str  # "window" or "spectrum"
    asset_level: int

    def match(self, topic: str) -> str | None:
        """Return the asset id when ``topic`` matches this filter, else None."""
        filter_levels = self.filter.split("/")
        topic_levels = topic.split("/")
        if len(filter_levels) != len(topic_levels):
            return None
        for pattern, level in zip(filter_levels, topic_levels, strict=True):
            if pattern not in ("+", level):
                return None
        asset = topic_levels[self.asset_level]
        return asset or None


def make_input_filter(pattern: str, prefix: str, kind: str) -> InputFilter:
    """Expand ``{prefix}`` and locate the asset level (validated by the settings model)."""
    expanded = pattern.replace("{prefix}", prefix)
    levels = expanded.split("/")
    if levels.count("+") != 1 or "#" in levels:
        raise ValueError(f"topic filter {expanded!r} must contain exactly one '+' and no '#'")
    return InputFilter(filter=expanded, kind=kind, asset_level=levels.index("+"))


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic the agent reads or writes, derived from the configuration."""

    prefix: str
    client_id: str
    inputs: tuple[InputFilter, ...]
    shared_group: str | None = None
    fleet_group: str = "faultline-fleet"

    def subscriptions(self) -> list[str]:
        """Filters to subscribe to; a shared group lets N gateways or processes split one
        stream, and answers each question once.

        Command topics are never shared: every gateway must hear a command meant for all.
        """
        shared = [*(f.filter for f in self.inputs), self.query]
        if self.shared_group:
            shared = [f"{SHARED_PREFIX}{self.shared_group}/{f}" for f in shared]
        return [*shared[:-1], *self.commands, shared[-1]]

    @property
    def commands(self) -> tuple[str, str]:
        """Operator commands for this gateway, and for every gateway of the prefix."""
        return (f"{self.prefix}/commands/{self.client_id}", f"{self.prefix}/commands/all")

    def classify(self, topic: str) -> tuple[str, str] | None:
        """Map an inbound topic to ``(kind, asset)``; None for topics we did not ask for."""
        for input_filter in self.inputs:
            asset = input_filter.match(topic)
            if asset is not None:
                return input_filter.kind, asset
        return None

    def alert(self, asset: str) -> str:
        return f"{self.prefix}/alerts/{asset}"

    def report(self, asset: str) -> str:
        return f"{self.prefix}/reports/{asset}"

    @property
    def query(self) -> str:
        """Plain-text questions (MQTT 5 request/response, or JSON with ``reply_to``)."""
        return f"{self.prefix}/query"

    @property
    def answers(self) -> str:
        """Where an answer goes when the question named no response topic."""
        return f"{self.prefix}/answers"

    @property
    def fleet_search(self) -> str:
        """Searches sent to the whole fleet; one coordinating gateway takes each."""
        return f"{self.prefix}/fleet/search"

    @property
    def fleet_replies(self) -> str:
        """This gateway's inbox for the shard holders' replies (never shared)."""
        return f"{self.prefix}/fleet/replies/{self.client_id}"

    def fleet_ask_inbox(self, token: str) -> str:
        """Where ``library search --fleet`` waits for its one answer."""
        return f"{self.prefix}/fleet/asks/{token}"

    def shard_search(self, shard: str) -> str:
        """Requests for one shard's top-k; its holders share them."""
        return f"{self.prefix}/shards/{shard}/search"

    def shard_of(self, topic: str) -> str | None:
        """The shard a request topic names, None for any other topic."""
        head, tail = f"{self.prefix}/shards/", "/search"
        if topic.startswith(head) and topic.endswith(tail):
            shard = topic[len(head) : -len(tail)]
            return shard if shard and "/" not in shard else None
        return None

    def fleet_subscriptions(self, shards: tuple[str, ...], *, coordinate: bool) -> list[str]:
        """What a fleet member subscribes to: the held shards' request topics and, when it
        coordinates, the fleet's search topic, both shared in ``fleet_group``; its own
        reply inbox (its questions scatter too), not shared."""
        group = f"{SHARED_PREFIX}{self.fleet_group}/"
        held = [f"{group}{self.shard_search(s)}" for s in shards]
        searches = [f"{group}{self.fleet_search}"] if coordinate else []
        return [*held, *searches, self.fleet_replies]

    @property
    def errors(self) -> str:
        return f"{self.prefix}/errors"

    @property
    def status(self) -> str:
        return f"{self.prefix}/status/{self.client_id}"

    def window(self, asset: str) -> str:
        """Where the simulator publishes windows for ``asset`` (first window filter)."""
        return self._input_topic("window", asset)

    def spectrum(self, asset: str) -> str:
        return self._input_topic("spectrum", asset)

    def _input_topic(self, kind: str, asset: str) -> str:
        for input_filter in self.inputs:
            if input_filter.kind == kind:
                levels = input_filter.filter.split("/")
                levels[input_filter.asset_level] = asset
                return "/".join(levels)
        raise LookupError(f"no {kind} filter configured")


def build_topics(
    prefix: str,
    client_id: str,
    window_filters: list[str],
    spectrum_filters: list[str],
    shared_group: str | None = None,
    fleet_group: str = "faultline-fleet",
) -> Topics:
    inputs = [make_input_filter(p, prefix, "window") for p in window_filters]
    inputs += [make_input_filter(p, prefix, "spectrum") for p in spectrum_filters]
    return Topics(
        prefix=prefix,
        client_id=client_id,
        inputs=tuple(inputs),
        shared_group=shared_group,
        fleet_group=fleet_group,
    )
