"""services: the network services built on the gateway (``naas``; more to come).

Each service is a package of its own with the same shape: a core that tests
can drive without I/O, back-ends for the store, and a thin server or command
around them.
"""
