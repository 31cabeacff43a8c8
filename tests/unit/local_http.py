"""Stand-in HTTP servers for the unit tests: a handler base that reads and answers JSON without logging each request,
and a server on 127.0.0.1 (a free port) in a thread of its own."""

from __future__ import annotations

import http.server
import json
import threading


class JsonHandler(http.server.BaseHTTPRequestHandler):
    def read_json(self):
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

    def reply(self, code: int, body) -> None:
        """``body``: a str sent as it is, anything else as JSON."""
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass  # a line on stderr for every request


def serve(handler: type[http.server.BaseHTTPRequestHandler]) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stop(server: http.server.ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()
