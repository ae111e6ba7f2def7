"""services.naas: Networking as a Service, shared external addresses and port blocks for pods.

- ``pools``, ``psid``: pools of shared addresses; their ports cut into plain
  blocks or RFC 7597 port sets;
- ``allocator``: who holds which address and block, over a back-end:
  ``sqlite_backend`` (one node) or ``etcd_backend`` (many nodes);
- ``server``: the allocator's JSON API on a Unix socket (``portico naas serve``,
  ``commands``);
- ``cni``: ``portico-cni``, the CNI plugin a container runtime runs, directly
  or as the IPAM plugin of ``ptp`` or ``bridge``.

Nothing is imported here: ``portico-cni`` starts for every pod and loads only
what it uses.
"""
