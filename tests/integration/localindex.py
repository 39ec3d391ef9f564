"""A real PEP 503 package index on 127.0.0.1 with HTTP basic auth, serving wheels built on the spot."""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from tests.servers import QuietServer


@dataclass
class LocalIndex:
    """Where the index listens and the credentials it wants."""

    port: int
    user: str
    password: str

    def url(self, user: str | None = None, password: str | None = None) -> str:
        user = self.user if user is None else user
        password = self.password if password is None else password
        return f"http://{user}:{password}@127.0.0.1:{self.port}/simple"


@contextmanager
def serve_index(
    wheels: list[Path], user: str = "ci", password: str = "s3cr3t-t0ken", stall: float = 0.0
) -> Iterator[LocalIndex]:
    """Serve the wheels under /simple/<project>/ until the block ends (the server then stops by itself)."""
    by_project: dict[str, list[Path]] = {}
    for wheel in wheels:
        by_project.setdefault(wheel.name.split("-")[0].replace("_", "-").lower(), []).append(wheel)
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            return

        def do_HEAD(self) -> None:
            self.head_only = True
            self.do_GET()

        def do_GET(self) -> None:
            if stall:
                time.sleep(stall)  # an index that hangs: bounded, so the server always stops
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="test"')
                self.end_headers()
                return
            parts = [p for p in self.path.split("?")[0].split("/") if p]
            if len(parts) == 2 and parts[0] == "simple" and parts[1] in by_project:
                links = "".join(
                    f'<a href="/files/{w.name}#sha256={hashlib.sha256(w.read_bytes()).hexdigest()}">{w.name}</a>\n'
                    for w in by_project[parts[1]]
                )
                self._send(200, f"<!DOCTYPE html><html><body>{links}</body></html>".encode(), "text/html")
            elif len(parts) == 2 and parts[0] == "files":
                match = [w for ws in by_project.values() for w in ws if w.name == parts[1]]
                if match:
                    self._send(200, match[0].read_bytes(), "application/octet-stream")
                else:
                    self._send(404, b"not found", "text/plain")
            else:
                self._send(404, b"not found", "text/plain")

        def _send(self, code: int, body: bytes, kind: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not getattr(self, "head_only", False):
                self.wfile.write(body)

    server = QuietServer(("127.0.0.1", 0), Handler)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield LocalIndex(server.server_address[1], user, password)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
