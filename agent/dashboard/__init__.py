"""The local web dashboard (issue 15): alerts, reports, spectra and status on one page."""

from faultline.agent.dashboard.server import Dashboard, dashboard_from_settings

__all__ = ["Dashboard", "dashboard_from_settings"]
