"""difytw: put the Dify API behind your own Twisted server.

Module map (imports point one way, top to bottom):

- ``sse``, ``errors``, ``fixture`` -- pure wire formats (no Twisted);
- ``fixtureindex``, ``faults``, ``blocking`` -- pure logic over fixtures;
- ``relay`` -- Twisted glue that moves body bytes with backpressure;
- ``proxy`` / ``replay`` -- the two klein applications;
- ``proxytap`` / ``replaytap`` -- ``twist`` options and services.
"""

__version__ = "0.1.0"
