# Portico's two promises: `make run` and `make test` work on a fresh machine.
# Both create .venv when it is missing and install what they need into it;
# `make test` also installs the Debian packages the tests use (tshark, nftables,
# ipset, iptables).

VENV    ?= .venv
PY      := $(VENV)/bin/python
PORTICO := $(VENV)/bin/portico
STAMP   := $(VENV)/.installed

.PHONY: run test bench lint typecheck system-deps clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench,dev]'
	touch $@

# tshark (and capinfos, from wireshark-common) decode our output independently;
# nft (nftables), ipset and iptables-legacy (iptables) run the classifier's kernel peers
# (bench/nftables.py, tests/bench/test_nftables_peer.py); etcd (etcd-server) is the shared
# store's back-end, started on loopback by tests/control/test_store.py; the reference CNI
# plugins (containernetworking-plugins, in /usr/lib/cni) run portico-cni as their IPAM
# plugin in tests/services/naas/test_cni_plugins.py; ping, curl and iperf3 are the users'
# clients the live tests (tests/test_up.py) drive through the gateway, and the lab turns
# the veth offloads off with ethtool.
system-deps:
	@command -v tshark >/dev/null 2>&1 || { \
	  echo "installing tshark (Debian package)"; \
	  apt-get update -q >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q tshark >/dev/null; }
	@command -v tshark >/dev/null 2>&1 || { echo "tshark is required by the tests: install it (apt-get install tshark)"; exit 1; }
	@command -v nft >/dev/null 2>&1 || { \
	  echo "installing nftables (Debian package)"; \
	  apt-get update -q >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q nftables >/dev/null; }
	@command -v nft >/dev/null 2>&1 || { echo "nft is required by the tests: install it (apt-get install nftables)"; exit 1; }
	@{ command -v ipset && command -v iptables-legacy; } >/dev/null 2>&1 || { \
	  echo "installing ipset and iptables (Debian packages)"; \
	  apt-get update -q >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q ipset iptables >/dev/null; }
	@{ command -v ipset && command -v iptables-legacy; } >/dev/null 2>&1 || { echo "ipset and iptables-legacy are required by the tests: install them (apt-get install ipset iptables)"; exit 1; }
	@command -v etcd >/dev/null 2>&1 || { \
	  echo "installing etcd (Debian package etcd-server)"; \
	  apt-get update -q >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server >/dev/null; }
	@command -v etcd >/dev/null 2>&1 || { echo "etcd is required by the tests: install it (apt-get install etcd-server)"; exit 1; }
	@test -x /usr/lib/cni/ptp || { \
	  echo "installing the reference CNI plugins (Debian package containernetworking-plugins)"; \
	  apt-get update -q >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q containernetworking-plugins >/dev/null; }
	@test -x /usr/lib/cni/ptp || { echo "the CNI plugins ptp and bridge are required by the tests: install them (apt-get install containernetworking-plugins)"; exit 1; }
	@{ command -v iperf3 && command -v ping && command -v curl && command -v ethtool; } >/dev/null 2>&1 || { \
	  echo "installing iperf3, ping, curl and ethtool (Debian packages iperf3, iputils-ping, curl, ethtool)"; \
	  apt-get update -q >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q iperf3 iputils-ping curl ethtool >/dev/null; }
	@{ command -v iperf3 && command -v ping && command -v curl && command -v ethtool; } >/dev/null 2>&1 || { echo "iperf3, ping, curl and ethtool are required by the live tests: install them (apt-get install iperf3 iputils-ping curl ethtool)"; exit 1; }

# The main job on the embedded default: the two-tenant example gateway over generated
# traffic (both tenants' flows to the Internet and back, inbound port forwarding, and
# traffic that must be refused), then what left each port, per stage, and why.
run: $(STAMP)
	@mkdir -p out
	$(PY) examples/two_tenants_traffic.py out/two-tenants.pcapng --flows 2000 --seed 1
	$(PORTICO) run examples/two-tenants.yaml --in out/two-tenants.pcapng \
	  --out out/two-tenants-out.pcapng --trace 2 --trace-filter dst=198.51.100.10,dport=8080

test: $(STAMP) system-deps lint typecheck
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PORTICO) bench --plot bench/pps_vs_batch.png

lint: $(STAMP)
	$(VENV)/bin/ruff check portico bench tests

typecheck: $(STAMP)
	$(VENV)/bin/mypy portico bench

clean:
	rm -rf out .pytest_cache .ruff_cache .mypy_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
