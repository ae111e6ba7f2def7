"""Shared test set-up.

Hypothesis explores new random examples on every local run (that is how it
found the pcapng reader's if_tsresol crash); under CI (``CI`` set) it runs a
fixed, derandomized set, so a submission's result does not depend on chance.

Scapy fills a missing Ethernet destination by resolving the IP destination:
for an address on a local subnet it sends a real ARP request or neighbour
solicitation and waits for the answer. Tests build packets with arbitrary
addresses and must never put traffic on the host's network, so resolution is
switched off here for every test: a missing destination becomes broadcast.
"""

import logging
import os

import scapy.layers.inet  # noqa: F401  (registers the IPv4 resolver)
import scapy.layers.inet6  # noqa: F401  (registers the IPv6 resolver)
import scapy.layers.l2  # noqa: F401  (creates conf.neighbor)
from hypothesis import settings
from scapy.config import conf

conf.neighbor.resolvers.clear()
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
