"""Library shards spread over gateways: scatter a search to the holders, merge exactly."""

from faultline.agent.fleet.coordinator import Coordinator
from faultline.agent.fleet.holder import ShardHolder
from faultline.agent.fleet.protocol import SEARCH_SCHEMA, FleetError, SearchLimits

__all__ = ["SEARCH_SCHEMA", "Coordinator", "FleetError", "SearchLimits", "ShardHolder"]
