"""Wire-level probes of Postgres and Redis for molecule/mlops's verify.

Needs only the Python standard library, so it runs on the controller and on
any lab host. Secrets are read from standard input, never from arguments or
the environment (both can end up on a process command line):

  python3 mlops_probe.py pg HOST PORT USER DATABASE  < password
      Startup and SCRAM-SHA-256 login; prints "ok" (exit 0) or
      "refused: <server message>" (exit 1).
  python3 mlops_probe.py redis HOST PORT [--auth] CMD [ARG...]  < user, password
      With --auth, AUTH with the user and password read from the first two
      lines of standard input, then the command; prints one reply per line,
      errors as "-ERR ...". Exit 0.

A network failure prints "unreachable: <reason>" and exits 2.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import socket
import struct
import sys

TIMEOUT = 10.0


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by the server")
        buf += chunk
    return buf


def _pg_message(sock: socket.socket) -> tuple[bytes, bytes]:
    kind = _recv_exact(sock, 1)
    (length,) = struct.unpack("!I", _recv_exact(sock, 4))
    return kind, _recv_exact(sock, length - 4)


def _pg_error_text(body: bytes) -> str:
    fields = {f[:1]: f[1:].decode(errors="replace") for f in body.split(b"\0") if f}
    return fields.get(b"M", "unknown error")


def _pg_send(sock: socket.socket, kind: bytes, body: bytes) -> None:
    sock.sendall(kind + struct.pack("!I", len(body) + 4) + body)


def pg_login(host: str, port: int, user: str, database: str, password: str) -> str:
    """Log in to Postgres; returns "ok" or "refused: <message>"."""
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        params = b"user\0" + user.encode() + b"\0database\0" + database.encode() + b"\0\0"
        startup = struct.pack("!I", 196608) + params
        sock.sendall(struct.pack("!I", len(startup) + 4) + startup)
        client_first_bare = ""
        server_first = ""
        salted = b""
        while True:
            kind, body = _pg_message(sock)
            if kind == b"E":
                return "refused: " + _pg_error_text(body)
            if kind == b"Z":
                return "ok"
            if kind != b"R":
                continue
            (code,) = struct.unpack("!I", body[:4])
            if code == 0:
                continue
            if code == 10:
                nonce = base64.b64encode(secrets.token_bytes(18)).decode()
                client_first_bare = "n=,r=" + nonce
                first = ("n,," + client_first_bare).encode()
                mech = b"SCRAM-SHA-256\0"
                _pg_send(sock, b"p", mech + struct.pack("!I", len(first)) + first)
            elif code == 11:
                server_first = body[4:].decode()
                attrs = dict(item.split("=", 1) for item in server_first.split(","))
                salted = hashlib.pbkdf2_hmac(
                    "sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
                )
                client_key = hmac.digest(salted, b"Client Key", "sha256")
                stored_key = hashlib.sha256(client_key).digest()
                without_proof = "c=biws,r=" + attrs["r"]
                auth_message = f"{client_first_bare},{server_first},{without_proof}".encode()
                signature = hmac.digest(stored_key, auth_message, "sha256")
                proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
                final = without_proof + ",p=" + base64.b64encode(proof).decode()
                _pg_send(sock, b"p", final.encode())
            elif code == 12:
                continue
            else:
                return f"refused: authentication method {code} is not SCRAM-SHA-256"


def _resp_encode(args: list[str]) -> bytes:
    out = f"*{len(args)}\r\n".encode()
    for arg in args:
        data = arg.encode()
        out += f"${len(data)}\r\n".encode() + data + b"\r\n"
    return out


def _resp_read(reader: socket.SocketIO) -> str:
    line = reader.readline()
    if not line:
        raise ConnectionError("connection closed by the server")
    kind, rest = line[:1], line[1:].rstrip(b"\r\n").decode(errors="replace")
    if kind in (b"+", b"-", b":"):
        return (kind.decode() if kind == b"-" else "") + rest
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return "(nil)"
        return reader.read(size + 2)[:size].decode(errors="replace")
    if kind == b"*":
        return " ".join(_resp_read(reader) for _ in range(max(int(rest), 0)))
    return line.decode(errors="replace").rstrip()


def redis_commands(host: str, port: int, user: str, password: str, command: list[str]) -> list[str]:
    """AUTH (when user is set) then one command; returns the replies."""
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        reader = socket.SocketIO(sock, "rb")
        replies = []
        requests = ([["AUTH", user, password]] if user else []) + [command]
        for request in requests:
            sock.sendall(_resp_encode(request))
            replies.append(_resp_read(reader))
        return replies


def main(argv: list[str]) -> int:
    try:
        if len(argv) == 5 and argv[0] == "pg":
            result = pg_login(argv[1], int(argv[2]), argv[3], argv[4], sys.stdin.readline().rstrip("\n"))
            print(result)
            return 0 if result == "ok" else 1
        if len(argv) >= 4 and argv[0] == "redis":
            command = argv[3:]
            user = password = ""
            if command[0] == "--auth":
                command = command[1:]
                user = sys.stdin.readline().rstrip("\n")
                password = sys.stdin.readline().rstrip("\n")
            for reply in redis_commands(argv[1], int(argv[2]), user, password, command):
                print(reply)
            return 0
    except (OSError, ValueError) as exc:
        print(f"unreachable: {exc}")
        return 2
    print("usage: mlops_probe.py pg HOST PORT USER DATABASE | redis HOST PORT [--auth] CMD [ARG...]")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
