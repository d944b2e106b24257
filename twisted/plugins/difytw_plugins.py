from twisted.application.service import ServiceMaker

difyproxy = ServiceMaker("difyproxy", "difytw.proxytap", "Stream the Dify API through your own server, holding the app key.", "difyproxy")
difyreplay = ServiceMaker("difyreplay", "difytw.replaytap", "A fake Dify that replays recorded SSE fixtures with their chunking and timing.", "difyreplay")
