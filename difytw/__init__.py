"""difytw: put the Dify API behind your own Twisted server.

Module map (imports point one way, top to bottom; each module's docstring says what it owns):

- wire formats, pure (no Twisted): ``sse``, ``chunked``, ``errors``, ``fixturerecord`` ->
  ``fixture`` / ``fixturewrite``;
- pure logic over them: ``fixtureindex``, ``faults``, ``blocking``, ``streamwatch``,
  ``scrub``, ``recorder``, ``uri``, ``headers``, ``uploads``, and the access decisions
  (``auth``, ``authconfig``, ``identity``, ``formuser``, ``allowlist``, ``limits``, ``cors``,
  ``refusal``), and what the replay server refuses first (``replaychecks``);
- ``twist`` option values: ``optionvalues`` (sizes, durations, the app key's source);
- the fixture toolbox (pure): ``eventcatalog``, ``streamlint``, ``fixturelint``,
  ``fixtureshow``, ``pacing``, ``transcript``, ``har``, ``harimport``, ``fixturecli``;
- Twisted glue: ``relay`` (body bytes with backpressure), ``uploadbody`` (the request
  body fed upstream), ``upstream`` (the Agent and treq client), ``journal``, ``playback``,
  ``stopper``, ``usage``, ``recordfolder``, ``access``,
  ``accesslog``, ``proxysite`` (difyproxy's Site: refusals before any route),
  ``listening`` (``--listen`` endpoints, shared by both ``twist`` plugins) over
  ``writethrough`` (TCP sockets that send at once while nothing is queued);
- ``forward`` (one admitted request upstream and back, relayed);
- the two klein applications: ``proxy`` and ``replay`` (with ``passthrough`` for recording);
- ``web`` -- the offline demo (page + proxy + in-process replay);
- ``proxytap`` / ``replaytap`` (+ ``accessoptions``, ``proxyservices``) -- ``twist`` options
  and services, named by ``twisted/plugins/difytw_plugins.py``.
"""

__version__ = "0.1.0"
