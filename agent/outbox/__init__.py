"""Store-and-forward of everything the agent says: durable, bounded, ordered per stream."""

from faultline.agent.outbox.backlog import ClassPolicy, OnFull
from faultline.agent.outbox.outbox import Outbox, OutboxConfig, Publisher

__all__ = ["ClassPolicy", "OnFull", "Outbox", "OutboxConfig", "Publisher"]
