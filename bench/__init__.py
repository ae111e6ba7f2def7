"""Portico's benchmark suite: ``portico bench`` (see ``bench.harness``).

Every workload runs the same generated packets through Portico and through
the peers (Scapy, dpkt, a plain ``struct`` loop) in one run, checks that they
computed the same thing, and reports packets per second and the ratios.
Figures are recorded in ``bench/RESULTS.md``.
"""
