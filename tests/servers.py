"""HTTP servers the tests start on 127.0.0.1."""

from __future__ import annotations

import sys
from http.server import ThreadingHTTPServer
from typing import Any


class QuietServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that does not print a traceback when a client hangs up mid-answer (envlock refusing a
    stream early is what the tests provoke): printed from the server's own thread, it would land in whichever test's
    captured stderr runs then. Any other error in a handler is printed as before."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)
