"""Shared test set-up.

Scapy fills a missing Ethernet destination by resolving the IP destination:
for an address on a local subnet it sends a real ARP request or neighbour
solicitation and waits for the answer. Tests build packets with arbitrary
addresses and must never put traffic on the host's network, so resolution is
switched off here for every test: a missing destination becomes broadcast.
"""

import logging

import scapy.layers.inet  # noqa: F401  (registers the IPv4 resolver)
import scapy.layers.inet6  # noqa: F401  (registers the IPv6 resolver)
import scapy.layers.l2  # noqa: F401  (creates conf.neighbor)
from scapy.config import conf

conf.neighbor.resolvers.clear()
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
