#!/usr/bin/env python3
"""Serve a model directory as a Hugging Face Hub repo on loopback, for measuring `qinfer pull`
(download, `--quant` conversion, peak disk) without the network.

    python3 tools/local_hub.py DIR ORG/NAME [--port 8765]
    HF_ENDPOINT=http://127.0.0.1:8765 qinfer pull ORG/NAME --quant Q4_K_M

It answers what `qinfer pull` asks: the file listing (`/api/models/REPO/revision/REV`, sizes
and LFS SHA-256s), `HEAD` of `/REPO/resolve/SHA/FILE` (LFS files redirected to a blob URL with
`X-Linked-Etag` / `X-Linked-Size`), and `GET` of files and blobs with `Range`.
Standard library only.
"""

import argparse
import hashlib
import http.server
import json
import os
import shutil

SHA = "0123456789abcdef0123456789abcdef01234567"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("repo")
    ap.add_argument("--port", type=int, default=8765)
    a = ap.parse_args()
    files = sorted(f for f in os.listdir(a.dir) if os.path.isfile(os.path.join(a.dir, f)))
    info = {}
    for f in files:
        p = os.path.join(a.dir, f)
        size = os.path.getsize(p)
        lfs = size > 1 << 20
        digest = None
        if lfs:
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 24), b""):
                    h.update(chunk)
            digest = h.hexdigest()
        info[f] = (p, size, digest)
    listing = {
        "sha": SHA,
        "siblings": [
            {"rfilename": f, "size": s, **({"lfs": {"sha256": d, "size": s}} if d else {})}
            for f, (_, s, d) in info.items()
        ],
    }
    resolve = f"/{a.repo}/resolve/{SHA}/"

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def reply(self, status, headers, body=b"", length=None):
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            if self.command != "HEAD" and body:
                self.wfile.write(body)

        def send_file(self, path, size):
            start = 0
            rng = self.headers.get("Range", "")
            if rng.startswith("bytes="):
                start = int(rng[6:].split("-")[0] or 0)
            if start >= size and size:
                return self.reply(416, {})
            headers = {}
            status = 200
            if start:
                status = 206
                headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
            self.reply(status, headers, length=size - start)
            if self.command == "HEAD":
                return
            with open(path, "rb") as fh:
                fh.seek(start)
                shutil.copyfileobj(fh, self.wfile, 1 << 22)

        def do_GET(self):
            path = self.path.split("?")[0]
            if path.startswith(f"/api/models/{a.repo}/revision/"):
                return self.reply(200, {}, json.dumps(listing).encode())
            if path.startswith(resolve) and path[len(resolve):] in info:
                name = path[len(resolve):]
                p, size, digest = info[name]
                if digest and self.command == "HEAD":
                    return self.reply(302, {
                        "Location": f"/blobs/{name}",
                        "X-Linked-Etag": f'"{digest}"',
                        "X-Linked-Size": str(size),
                    })
                if self.command == "HEAD":
                    return self.reply(200, {"ETag": f'"{hashlib.sha1(name.encode()).hexdigest()}"'},
                                      length=size)
                return self.send_file(p, size)
            if path.startswith("/blobs/") and path[7:] in info:
                p, size, _ = info[path[7:]]
                return self.send_file(p, size)
            self.reply(404, {})

        do_HEAD = do_GET

    server = http.server.ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    print(f"serving {a.dir} as {a.repo} on http://127.0.0.1:{a.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
