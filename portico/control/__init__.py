"""control: the control plane — the desired-state model (``model``); later the store,
the compiler that turns the model into datapath tables, the REST API and the daemon.

Config flows one way: API or file -> model -> store -> compiler -> tables.
"""

from portico.control.model import Config, ConfigError, load_config, parse_config

__all__ = ["Config", "ConfigError", "load_config", "parse_config"]
