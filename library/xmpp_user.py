#!/usr/bin/python
# Copyright: edgelab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Manage ejabberd accounts through ejabberd's HTTP API (mod_http_api)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: xmpp_user
short_description: Manage ejabberd XMPP accounts, one or hundreds per call, through ejabberd's HTTP API
description:
  - Creates, updates the password of, or removes accounts on an ejabberd server by calling the
    server's HTTP API (C(mod_http_api)) with HTTP Basic authentication as an ejabberd admin account.
  - Run it on the XMPP host itself, against an API listener bound to the loopback address. No
    password ever appears on a process command line (C(ejabberdctl register USER HOST PASSWORD)
    and the community.general C(ejabberd_user) module put it there); passwords travel only in
    the module's arguments and in HTTP request bodies on the loopback interface.
  - One task handles a list of users (bulk); the module makes one C(registered_users) request,
    then only the requests each listed user needs (C(register), C(check_password),
    C(change_password), C(unregister)), O(api_workers) at a time over keep-alive connections.
  - A server that is not running or not reachable and an admin account that cannot authenticate
    are reported as failures with distinct messages; they are never taken for "user absent".
  - The API must allow the admin account the commands C(registered_users), C(register),
    C(unregister), C(check_password) and C(change_password) through C(api_permissions). The
    edgelab role C(ejabberd) configures exactly that.
  - ejabberd 23.01 logs every API call's arguments at level info; set C(hide_sensitive_log_data) to
    C(true) in ejabberd.yml (the role does) or the passwords end up in ejabberd's log.
version_added: "1.0.0"
author:
  - edgelab maintainers (!UNKNOWN)
options:
  host:
    description:
      - The XMPP domain (ejabberd virtual host) the accounts belong to.
    type: str
    required: true
  name:
    description:
      - Local part of one account (C(node-nuc1) for C(node-nuc1@HOST)). A full JID is accepted if
        its domain is O(host). Names are lower-cased, as ejabberd does.
      - A name is at most 1023 bytes in UTF-8 (the XMPP local part limit of RFC 7622, which ejabberd
        enforces) and has none of the characters C(") C(&) C(') C(/) C(:) C(<) C(>) C(@), no
        whitespace and no control characters; any other name fails the task before any request,
        naming the entry.
      - Mutually exclusive with O(users) and O(users_file).
    type: str
    aliases: [user]
  password:
    description:
      - Password of the account given in O(name). Required with O(state=present).
    type: str
  users:
    description:
      - A list of accounts handled in one call.
    type: list
    elements: dict
    suboptions:
      name:
        description: Local part (or full JID in O(host)) of the account.
        type: str
        required: true
      password:
        description: Its password. Required with O(state=present).
        type: str
  users_file:
    description:
      - Path, on the host the module runs on, of a users file in the seed format, one
        C(agentid,password) per line, in UTF-8. Blank lines and lines starting with C(#) are skipped;
        whitespace around the name and the password is removed; the password is everything
        after the first comma.
      - A line that is not UTF-8, has no comma, or has an empty name fails the task before any
        request, naming the file and the line number.
    type: path
  state:
    description:
      - V(present) creates missing accounts (and updates passwords as O(update_password) says);
        V(absent) removes the accounts listed (passwords are then ignored).
    type: str
    choices: [present, absent]
    default: present
  update_password:
    description:
      - V(always) checks every listed existing account's password (one C(check_password)
        request each) and changes it when it differs. V(on_create) sets passwords only when it
        creates an account.
    type: str
    choices: [always, on_create]
    default: always
  api_url:
    description:
      - Base URL of ejabberd's C(mod_http_api) handler, C(http://) or C(https://), a host, an optional
        port and a path; no credentials, query or fragment. Keep it on the loopback address.
    type: str
    default: http://127.0.0.1:5281/api
  api_user:
    description:
      - The admin account used for HTTP Basic authentication, as a JID (C(admin@HOST)); a bare
        local part gets C(@HOST) appended.
    type: str
    required: true
  api_password:
    description:
      - The admin account's password.
    type: str
    required: true
  api_timeout:
    description:
      - Seconds to wait for each HTTP request (connection, then answer); 1 or more.
    type: int
    default: 30
  api_workers:
    description:
      - How many requests run in parallel, each worker over its own keep-alive connection. ejabberd
        hashes passwords (SCRAM) and checks the admin's password on every request, so parallel
        requests use the server's cores. The first failure stops new requests.
    type: int
    default: 4
  api_ca_path:
    description:
      - CA bundle that verifies the server certificate when O(api_url) is C(https://). The
        system's trust store is used when it is not given. Verification cannot be turned off.
      - A file that does not exist or holds no usable certificate fails the task before any request,
        naming the file. Giving it with an C(http://) O(api_url) fails too.
    type: path
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Read requests (C(registered_users), C(check_password)) are made; writes are not.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details: >-
      The diff names the accounts that are (or would be) created, removed, or given a new
      password; never a password.
notes:
  - "Failures are distinct: an unreachable API (server down, wrong port) says so and names the URL;
    HTTP 401/403 says the admin account could not authenticate or is not allowed the command;
    an unknown O(host) says the virtual host is not served."
requirements:
  - ejabberd 21.07 or later with C(mod_http_api) (tested with Debian's ejabberd 23.01 and 24.12).
"""

EXAMPLES = r"""
- name: Register one agent
  xmpp_user:
    host: xmpp.lab.example
    name: node-nuc2
    password: "{{ node_nuc2_password }}"
    api_user: admin@xmpp.lab.example
    api_password: "{{ ejabberd_admin_password }}"

- name: Register all agents in one call (a list of {name, password})
  xmpp_user:
    host: xmpp.lab.example
    users: "{{ agent_accounts }}"
    update_password: always
    api_user: admin@xmpp.lab.example
    api_password: "{{ ejabberd_admin_password }}"
  no_log: true

- name: Register the accounts of a seed users file (agentid,password per line) already on the host
  xmpp_user:
    host: xmpp.lab.example
    users_file: /root/users.txt
    update_password: on_create
    api_user: admin@xmpp.lab.example
    api_password: "{{ ejabberd_admin_password }}"

- name: Remove two agents
  xmpp_user:
    host: xmpp.lab.example
    users:
      - name: node-old1
      - name: node-old2
    state: absent
    api_user: admin@xmpp.lab.example
    api_password: "{{ ejabberd_admin_password }}"
"""

RETURN = r"""
created:
  description: JIDs of the accounts created (or that would be, in check mode).
  returned: always
  type: list
  elements: str
  sample: [node-nuc2@xmpp.lab.example]
updated:
  description: JIDs of existing accounts whose password was changed (or would be).
  returned: always
  type: list
  elements: str
  sample: []
removed:
  description: JIDs of the accounts removed (or that would be).
  returned: always
  type: list
  elements: str
  sample: []
unchanged:
  description: Number of listed accounts that needed no change.
  returned: always
  type: int
  sample: 499
requests:
  description: Number of HTTP requests made to the API.
  returned: always
  type: int
  sample: 501
"""

import base64
import http.client
import json
import ssl
import threading
import unicodedata
from concurrent.futures import ThreadPoolExecutor, as_completed
from urllib.parse import urlsplit

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_native

# Characters XMPP forbids in a local part (RFC 7622), plus whitespace.
_FORBIDDEN_LOCAL = set("\"&'/:<>@") | set(" \t\r\n")
# RFC 7622 section 3.3: a local part is at most 1023 octets (UTF-8); ejabberd refuses longer ones.
MAX_LOCAL_BYTES = 1023


def check_api_url(url):
    """Raise ValueError with one line when `url` is not a usable http(s)://host[:port]/path URL."""
    authority = url.partition("://")[2].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if "@" in authority:  # checked first: the other messages show the URL
        raise ValueError("api_url must not carry credentials (user@ or user:password@): give them as api_user "
                         "and api_password")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"api_url {url!r} is not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"api_url must start with http:// or https://, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"api_url {url!r} has no host: give one, as in http://127.0.0.1:5281/api")
    if parts.query or parts.fragment:
        raise ValueError(f"api_url {url!r} has a query or fragment: give only scheme, host, port and path")
    if port == 0:
        raise ValueError(f"api_url {url!r} has port 0")


def ssl_context(ca_path):
    """A verifying client context; ValueError naming the file when `ca_path` cannot be used."""
    try:
        return ssl.create_default_context(cafile=ca_path)
    except FileNotFoundError as exc:
        raise ValueError(f"api_ca_path {ca_path} does not exist") from exc
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"api_ca_path {ca_path} cannot be used as a CA bundle: {to_native(exc)}") from exc


class ApiUnreachableError(Exception):
    """The HTTP API could not be reached at all (server down, wrong address)."""


class ApiAuthError(Exception):
    """The API answered 401/403: the admin account cannot authenticate or is not allowed."""


class ApiError(Exception):
    """Any other unexpected API answer."""

    def __init__(self, command, status, body):
        super().__init__(command, status, body)
        self.command = command
        self.status = status
        self.body = body


class HttpTransport:
    """Minimal keep-alive HTTP(S) client: POST a JSON body, return (status, decoded JSON body)."""

    def __init__(self, url, timeout, ca_path=None):
        check_api_url(url)
        parts = urlsplit(url)
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base_path = parts.path.rstrip("/")
        self.timeout = timeout
        self.context = ssl_context(ca_path) if parts.scheme == "https" else None
        self.conn = None
        self.used = False

    def _connect(self):
        if self.context is not None:
            self.conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                                    context=self.context)
        else:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        self.used = False

    def post(self, command, payload, headers):
        path = f"{self.base_path}/{command}"
        body = json.dumps(payload, sort_keys=True).encode("utf-8")
        for attempt in (1, 2):
            if self.conn is None:
                self._connect()
            reused = self.used
            try:
                self.conn.request("POST", path, body=body, headers=headers)
                response = self.conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                # A kept-alive connection the server closed in between: reconnect once.
                self.close()
                if reused and attempt == 1:
                    continue
                raise ApiUnreachableError(f"{to_native(exc)} (connection closed by the server)") from exc
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise ApiUnreachableError(to_native(exc)) from exc
            self.used = True
            if response.getheader("Connection", "").lower() == "close":
                self.close()
            return response.status, data
        raise ApiUnreachableError("no answer")  # pragma: no cover

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None


class EjabberdApi:
    """The few mod_http_api commands the module uses."""

    def __init__(self, transport, api_user, api_password, vhost=None):
        token = base64.b64encode((f"{api_user}:{api_password}").encode()).decode("ascii")
        self.transport = transport
        self.headers = {
            "Authorization": "Basic " + token,
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        if vhost:
            # ejabberd 24.x looks up mod_http_api's settings for the virtual host named by
            # the HTTP Host and logs a warning on every request whose Host (the loopback
            # address of api_url) is not one it serves; the XMPP domain is one it serves.
            self.headers["Host"] = f"[{vhost}]" if ":" in vhost else vhost
        self.requests = 0

    def call(self, command, payload):
        self.requests += 1
        status, data = self.transport.post(command, payload, self.headers)
        try:
            body = json.loads(data.decode("utf-8")) if data else None
        except ValueError:
            body = data.decode("utf-8", "replace")
        if status in (401, 403):
            raise ApiAuthError(f"HTTP {status} on {command}: {_message(body)}")
        if status != 200:
            raise ApiError(command, status, body)
        return body

    def registered_users(self, host):
        body = self.call("registered_users", {"host": host})
        if not isinstance(body, list):
            raise ApiError("registered_users", 200, body)
        return set(body)

    def register(self, user, host, password):
        """Create an account; return False if it already existed (HTTP 409)."""
        try:
            self.call("register", {"user": user, "host": host, "password": password})
        except ApiError as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def check_password(self, user, host, password):
        """True if the account's password is `password`.

        ejabberd 23.01 and 24.12 answer the integer 0 for a match and 1 otherwise; a JSON
        boolean is read as the answer itself (true: a match). Anything else is an ApiError.
        """
        body = self.call("check_password", {"user": user, "host": host, "password": password})
        if isinstance(body, bool):  # tested first: True == 1 and False == 0 in Python
            return body
        if isinstance(body, int) and body in (0, 1):
            return body == 0
        raise ApiError("check_password", 200, body)

    def change_password(self, user, host, password):
        """Set the password; ejabberd answers 0 (23.01, 24.12) or true when it was set."""
        body = self.call("change_password", {"user": user, "host": host, "newpass": password})
        if body is True or (isinstance(body, int) and not isinstance(body, bool) and body == 0):
            return
        raise ApiError("change_password", 200, body)

    def unregister(self, user, host):
        self.call("unregister", {"user": user, "host": host})


def _message(body):
    if isinstance(body, dict):
        return body.get("message") or json.dumps(body)
    return to_native(body)


def _shown(name):
    """`name` for a message: quoted, and cut when it is long."""
    return repr(name) if len(name) <= 64 else repr(name[:32]) + "... (%d characters)" % len(name)


def check_host(host):
    """Raise ValueError when `host` cannot be an XMPP domain."""
    if not host or host != host.strip() or any(c in host for c in " \t\r\n/@"):
        raise ValueError(f"host {host!r} is not an XMPP domain (a name like xmpp.example.org)")


def normalize_name(name, host):
    """Return the lower-cased local part of `name` (a local part or a JID in `host`)."""
    if name is None:
        raise ValueError("a user without a name")
    name = name.strip()
    if "@" in name:
        local, _sep, domain = name.partition("@")
        domain = domain.split("/", 1)[0]
        if domain.lower() != host.lower():
            raise ValueError(f"user {_shown(name)} is not in the XMPP domain {host!r}")
        name = local
    if not name:
        raise ValueError("the user name is empty")
    if any(c in _FORBIDDEN_LOCAL or unicodedata.category(c) == "Cc" for c in name):
        raise ValueError(f"user name {_shown(name)} contains a character XMPP forbids in a local part")
    name = name.lower()
    size = len(name.encode("utf-8"))
    if size > MAX_LOCAL_BYTES:
        raise ValueError("user name %s is %d bytes long (UTF-8): XMPP allows at most %d in a local part" % (
            _shown(name), size, MAX_LOCAL_BYTES))
    return name


def parse_users_file(data, path):
    """Parse the seed's `agentid,password` format (bytes, UTF-8) into [{'name', 'password', 'where'}]."""
    users = []
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark, as some editors write
        data = data[3:]
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise ValueError("users_file %s line %d is not UTF-8 text (byte 0x%02x at column %d)" % (
                path, number, raw[exc.start], exc.start + 1)) from exc
        if not line or line.startswith("#"):
            continue
        name, sep, password = line.partition(",")
        if not sep:
            raise ValueError("users_file %s line %d has no comma (expected agentid,password)" % (path, number))
        users.append({"name": name.strip(), "password": password.strip(),
                      "where": "users_file %s line %d" % (path, number)})
    return users


def collect_users(params):
    """Return an ordered dict name -> password (or None) from name/users/users_file."""
    host = params["host"]
    if params["name"] is not None:
        entries = [{"name": params["name"], "password": params["password"], "where": "name"}]
    elif params["users"] is not None:
        entries = [dict(entry, where="users[%d]" % index) for index, entry in enumerate(params["users"])]
    else:
        path = params["users_file"]
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise ValueError(f"cannot read users_file {path}: {to_native(exc)}") from exc
        entries = parse_users_file(data, path)
    wanted = {}
    for entry in entries:
        try:
            name = normalize_name(entry.get("name"), host)
        except ValueError as exc:
            raise ValueError("{}: {}".format(entry["where"], exc)) from exc
        password = entry.get("password")
        if params["state"] == "present":
            if password is None or password == "":
                raise ValueError("{}: user {!r} has no password (required with state=present)".format(
                    entry["where"], name))
            if name in wanted and wanted[name] != password:
                raise ValueError("{}: user {!r} is listed twice with different passwords".format(
                    entry["where"], name))
        wanted[name] = password
    return wanted


class Progress:
    """What has been done so far (kept when a later request fails)."""

    def __init__(self):
        self.created, self.updated, self.removed = [], [], []
        self.unchanged = 0


def _apply_one(module, api, name, password, existing):
    """Bring one account to the wanted state; return 'created'|'updated'|'removed'|'unchanged'."""
    params = module.params
    host = params["host"]
    if params["state"] == "absent":
        if name not in existing:
            return "unchanged"
        if not module.check_mode:
            api.unregister(name, host)
        return "removed"
    if name not in existing and (module.check_mode or api.register(name, host, password)):
        return "created"
        # Created by someone else between our listing and now: treat it as existing.
    if params["update_password"] == "always" and not api.check_password(name, host, password):
        if not module.check_mode:
            api.change_password(name, host, password)
        return "updated"
    return "unchanged"


def _record(progress, name, outcome):
    if outcome == "unchanged":
        progress.unchanged += 1
    else:
        getattr(progress, outcome).append(name)


def apply_all(module, api_factory, wanted, existing, progress, apis):
    """Apply every account, over up to api_workers keep-alive connections in parallel.

    Stops at the first failure (no new request is started) and re-raises it.
    """
    items = list(wanted.items())
    workers = max(1, min(module.params["api_workers"], len(items)))
    if workers == 1:
        api = apis[0]
        for name, password in items:
            _record(progress, name, _apply_one(module, api, name, password, existing))
        return
    local = threading.local()
    lock = threading.Lock()
    abort = threading.Event()

    def work(item):
        if abort.is_set():
            return None
        api = getattr(local, "api", None)
        if api is None:
            api = local.api = api_factory()
            with lock:
                apis.append(api)
        return _apply_one(module, api, item[0], item[1], existing)

    recorded = set()

    def record(future):
        if future in recorded or not future.done() or future.cancelled() or future.exception() is not None:
            return
        recorded.add(future)
        if future.result() is not None:
            _record(progress, futures[future], future.result())

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(work, item): item[0] for item in items}
        try:
            for future in as_completed(futures):
                future.result()  # raises the first failure
                record(future)
        except BaseException:
            abort.set()
            pool.shutdown(wait=True, cancel_futures=True)
            for future in futures:  # keep what the other workers finished
                record(future)
            raise


def summarize(module, progress, apis, wanted):
    """The module's result (lists in input order) from what was done."""
    host = module.params["host"]
    order = {name: i for i, name in enumerate(wanted)}

    def jids(names):
        return [f"{n}@{host}" for n in sorted(names, key=order.get)]

    result = {
        "changed": bool(progress.created or progress.updated or progress.removed),
        "created": jids(progress.created),
        "updated": jids(progress.updated),
        "removed": jids(progress.removed),
        "unchanged": progress.unchanged,
        "requests": sum(api.requests for api in apis),
    }
    if module._diff:
        before, after = [], []
        for jid in result["created"]:
            before.append(f"{jid}: absent")
            after.append(f"{jid}: present")
        for jid in result["updated"]:
            before.append(f"{jid}: present")
            after.append(f"{jid}: present (password changed)")
        for jid in result["removed"]:
            before.append(f"{jid}: present")
            after.append(f"{jid}: absent")
        result["diff"] = {
            "before_header": f"xmpp accounts on {host}",
            "after_header": f"xmpp accounts on {host}",
            "before": "\n".join(before) + ("\n" if before else ""),
            "after": "\n".join(after) + ("\n" if after else ""),
        }
    return result


def build_module():
    return AnsibleModule(
        argument_spec=dict(
            host=dict(type="str", required=True),
            name=dict(type="str", aliases=["user"]),
            password=dict(type="str", no_log=True),
            users=dict(
                type="list",
                elements="dict",
                options=dict(
                    name=dict(type="str", required=True),
                    password=dict(type="str", no_log=True),
                ),
            ),
            users_file=dict(type="path"),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            update_password=dict(type="str", default="always", choices=["always", "on_create"], no_log=False),
            api_url=dict(type="str", default="http://127.0.0.1:5281/api"),
            api_user=dict(type="str", required=True),
            api_password=dict(type="str", required=True, no_log=True),
            api_timeout=dict(type="int", default=30),
            api_workers=dict(type="int", default=4),
            api_ca_path=dict(type="path"),
        ),
        mutually_exclusive=[("name", "users", "users_file")],
        required_one_of=[("name", "users", "users_file")],
        supports_check_mode=True,
    )


def main(transport_factory=HttpTransport):
    module = build_module()
    params = module.params
    api_user = params["api_user"]
    if "@" not in api_user:
        api_user = "{}@{}".format(api_user, params["host"])
    url = params["api_url"]
    if params["api_workers"] < 1:
        module.fail_json(msg="api_workers must be at least 1 (got %d)" % params["api_workers"])
    if params["api_timeout"] < 1:
        module.fail_json(msg="api_timeout must be 1 second or more (got %d)" % params["api_timeout"])
    if params["api_ca_path"] is not None and not url.startswith("https://"):
        module.fail_json(msg="api_ca_path is given but api_url %r is not https://: use https:// or drop "
                             "api_ca_path" % url)

    def api_factory():
        transport = transport_factory(url, params["api_timeout"], params["api_ca_path"])
        return EjabberdApi(transport, api_user, params["api_password"], vhost=params["host"])

    try:
        check_host(params["host"])
        wanted = collect_users(params)
        apis = [api_factory()]
    except ValueError as exc:
        module.fail_json(msg=to_native(exc))
    progress = Progress()
    failure = None
    try:
        existing = apis[0].registered_users(params["host"])
        apply_all(module, api_factory, wanted, existing, progress, apis)
    except ApiUnreachableError as exc:
        failure = dict(
            msg=f"ejabberd HTTP API at {url} is not reachable: {exc}. Is ejabberd running on this host, with "
            "mod_http_api listening there?",
            reason="unreachable",
        )
    except ApiAuthError as exc:
        failure = dict(
            msg=f"cannot authenticate to the ejabberd admin API at {url} as {api_user} ({exc}): wrong admin password, "
            "missing admin account, or the command is not allowed to it by api_permissions",
            reason="auth",
        )
    except ApiError as exc:
        if exc.status == 400 and "virtual host" in _message(exc.body).lower():
            failure = dict(msg="ejabberd does not serve the XMPP domain {!r} ({})".format(
                               params["host"], _message(exc.body)),
                           reason="unknown_host")
        else:
            failure = dict(
                msg=f"ejabberd API command {exc.command} failed: HTTP {exc.status}: {_message(exc.body)}",
                reason="api_error",
            )
    finally:
        for api in apis:
            api.transport.close()
    result = summarize(module, progress, apis, wanted)
    if failure is not None:
        if not result["changed"]:
            # Nothing was done: say only what failed (no empty lists that could read as "no such user").
            module.fail_json(**failure)
        failure["msg"] += " (before the failure: %d created, %d updated, %d removed)" % (
            len(result["created"]), len(result["updated"]), len(result["removed"]))
        result.pop("diff", None)
        module.fail_json(**dict(result, **failure))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
