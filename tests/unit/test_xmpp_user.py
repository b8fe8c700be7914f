"""Unit tests for library/xmpp_user.py.

They pin the exact HTTP requests the module makes (method, path, JSON body, Basic
credentials) against a local stub of ejabberd's mod_http_api that answers like
ejabberd 23.01 does (status codes and bodies recorded from a real 23.01 server:
see tests/integration/test_xmpp_user_ejabberd.py for the same flows against it).
ejabberd 24.12 (Debian 13) was recorded the same way on a lab host: it gives the
same status codes and values for the five commands the module uses (only the key
order of its error objects differs), so the stub stands for both; its changed
answers (a bare number from `stats`) concern the role's metrics writer, not the
module. The boolean answers some servers give are pinned in their own tests.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from ansible.module_utils.testing import patch_module_args

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("xmpp_user", ROOT / "library" / "xmpp_user.py")
xmpp_user = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(xmpp_user)

HOST = "xmpp.test"
ADMIN = "admin@xmpp.test"
ADMIN_PW = "adm1n-Secret"


class FakeEjabberd:
    """State and answers of ejabberd 23.01's mod_http_api for the commands the module uses."""

    def __init__(self):
        self.users = {"admin": ADMIN_PW}
        self.requests = []  # (method, path, body dict, authorization header)
        self.host_headers = []  # the HTTP Host of each request
        self.connections = 0
        self.force = {}  # command -> (status, body) to answer instead
        self.drop_idle = False  # close each connection after one answer, without telling

    def answer(self, command, args, auth):
        if command in self.force:
            return self.force[command]
        expected = "Basic " + base64.b64encode((f"{ADMIN}:{ADMIN_PW}").encode()).decode()
        if auth is None:
            return 403, {"status": "error", "code": 32,
                         "message": "AccessRules: Account does not have the right to perform the operation."}
        if auth != expected:
            return 401, {"status": "error", "code": 10, "message": "You are not authorized to call this command."}
        if args.get("host") != HOST:
            return 400, "Unknown virtual host"
        user = args.get("user")
        if command == "registered_users":
            return 200, sorted(self.users)
        if command == "register":
            if user in self.users:
                return 409, {"status": "error", "code": 10090,
                             "message": f"User {user}@{HOST} already registered"}
            self.users[user] = args["password"]
            return 200, f"User {user}@{HOST} successfully registered"
        if command == "check_password":
            return 200, 0 if self.users.get(user) == args["password"] else 1
        if command == "change_password":
            self.users[user] = args["newpass"]
            return 200, 0
        if command == "unregister":
            self.users.pop(user, None)
            return 200, ""
        return 404, {"status": "error", "code": 40, "message": "Endpoint not found."}


@pytest.fixture
def fake():
    state = FakeEjabberd()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like ejabberd_http

        def setup(self):
            super().setup()
            state.connections += 1

        def do_POST(self):
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            auth = self.headers.get("Authorization")
            state.requests.append(("POST", self.path, body, auth))
            state.host_headers.append(self.headers.get("Host"))
            command = self.path.rsplit("/", 1)[-1]
            status, answer = state.answer(command, body, auth)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            if state.drop_idle:
                self.close_connection = True

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.url = "http://127.0.0.1:%d/api" % server.server_address[1]
    yield state
    server.shutdown()
    server.server_close()


def run_module(args, capsys):
    """Run the module's main() with args; return (result dict, raw stdout)."""
    with patch_module_args(args), pytest.raises(SystemExit):
        xmpp_user.main()
    out = capsys.readouterr().out
    return json.loads(out), out


def base_args(fake, **extra):
    # One worker: requests in a fixed order, so they can be pinned exactly.
    args = {"host": HOST, "api_url": fake.url, "api_user": ADMIN, "api_password": ADMIN_PW, "api_workers": 1}
    args.update(extra)
    return args


def calls(fake):
    """The requests as (method, path, body) without the auth header."""
    return [(m, p, b) for m, p, b, _a in fake.requests]


AUTH = "Basic " + base64.b64encode((f"{ADMIN}:{ADMIN_PW}").encode()).decode()


def test_creates_users_with_exact_requests(fake, capsys):
    result, out = run_module(base_args(fake, users=[{"name": "node-a", "password": "pa"},
                                                    {"name": "node-b", "password": "pb"}]), capsys)
    assert calls(fake) == [
        ("POST", "/api/registered_users", {"host": HOST}),
        ("POST", "/api/register", {"host": HOST, "user": "node-a", "password": "pa"}),
        ("POST", "/api/register", {"host": HOST, "user": "node-b", "password": "pb"}),
    ]
    assert all(auth == AUTH for _m, _p, _b, auth in fake.requests)
    assert result["changed"] is True
    assert result["created"] == ["node-a@xmpp.test", "node-b@xmpp.test"]
    assert result["updated"] == [] and result["removed"] == []
    assert result["requests"] == 3
    # One keep-alive connection for the whole bulk call.
    assert fake.connections == 1
    # Passwords never come back in the output.
    assert "pa" not in json.dumps(result["created"]) and ADMIN_PW not in out


def test_every_request_names_the_xmpp_domain_as_http_host(fake, capsys):
    # ejabberd 24.12 logs a warning for each API request whose HTTP Host is not one of its
    # virtual hosts (here it would be 127.0.0.1:PORT, from api_url).
    fake.users.update({"node-a": "pw-a-7Kq2"})
    run_module(base_args(fake, users=[{"name": "node-a", "password": "pw-a-7Kq2"},
                                      {"name": "node-b", "password": "pw-b-2Lm9"}]), capsys)
    assert len(fake.host_headers) == 3 and set(fake.host_headers) == {HOST}


def test_parallel_workers_make_the_same_requests(fake, capsys):
    users = [{"name": "agent%03d" % i, "password": "pw%03d" % i} for i in range(40)]
    fake.users.update({"agent%03d" % i: "old" for i in range(0, 40, 4)})  # every 4th exists, wrong password
    result, _ = run_module(base_args(fake, users=users, api_workers=4), capsys)
    expected = [("POST", "/api/registered_users", {"host": HOST})]
    for i in range(40):
        name, password = "agent%03d" % i, "pw%03d" % i
        if i % 4 == 0:
            expected.append(("POST", "/api/check_password", {"host": HOST, "user": name, "password": password}))
            expected.append(("POST", "/api/change_password", {"host": HOST, "user": name, "newpass": password}))
        else:
            expected.append(("POST", "/api/register", {"host": HOST, "user": name, "password": password}))
    assert calls(fake)[0] == expected[0]
    def key(call):
        return json.dumps(call, sort_keys=True)

    assert sorted(map(key, calls(fake))) == sorted(map(key, expected))
    # Results are listed in input order whatever the completion order.
    assert result["created"] == ["agent%03d@xmpp.test" % i for i in range(40) if i % 4]
    assert result["updated"] == ["agent%03d@xmpp.test" % i for i in range(0, 40, 4)]
    assert result["requests"] == len(expected)
    assert 2 <= fake.connections <= 5  # the listing connection plus up to 4 workers


def test_a_failure_midway_stops_and_reports_what_was_done(fake, capsys):
    users = [{"name": "agent%03d" % i, "password": "pw"} for i in range(20)]
    real_answer = fake.answer

    def answer(command, args, auth):
        if command == "register" and args["user"] == "agent005":
            return 500, "internal_error"
        return real_answer(command, args, auth)

    fake.answer = answer
    result, _ = run_module(base_args(fake, users=users), capsys)
    assert result["failed"] is True and result["reason"] == "api_error"
    assert result["created"] == ["agent%03d@xmpp.test" % i for i in range(5)]
    assert "5 created" in result["msg"]
    # Nothing after the failure was attempted.
    assert [b["user"] for m, p, b in calls(fake)[1:]] == ["agent%03d" % i for i in range(6)]


def test_second_run_checks_passwords_and_changes_nothing(fake, capsys):
    fake.users.update({"node-a": "pa", "node-b": "pb"})
    result, _ = run_module(base_args(fake, users=[{"name": "node-a", "password": "pa"},
                                                  {"name": "node-b", "password": "pb"}]), capsys)
    assert calls(fake) == [
        ("POST", "/api/registered_users", {"host": HOST}),
        ("POST", "/api/check_password", {"host": HOST, "user": "node-a", "password": "pa"}),
        ("POST", "/api/check_password", {"host": HOST, "user": "node-b", "password": "pb"}),
    ]
    assert result["changed"] is False
    assert result["unchanged"] == 2


def test_update_password_always_changes_a_differing_password(fake, capsys):
    fake.users.update({"node-a": "old"})
    result, _ = run_module(base_args(fake, name="node-a", password="new"), capsys)
    assert calls(fake) == [
        ("POST", "/api/registered_users", {"host": HOST}),
        ("POST", "/api/check_password", {"host": HOST, "user": "node-a", "password": "new"}),
        ("POST", "/api/change_password", {"host": HOST, "user": "node-a", "newpass": "new"}),
    ]
    assert result["changed"] is True and result["updated"] == ["node-a@xmpp.test"]
    assert fake.users["node-a"] == "new"


def test_update_password_on_create_leaves_existing_alone(fake, capsys):
    fake.users.update({"node-a": "old"})
    result, _ = run_module(base_args(fake, name="node-a", password="new", update_password="on_create"), capsys)
    assert calls(fake) == [("POST", "/api/registered_users", {"host": HOST})]
    assert result["changed"] is False
    assert fake.users["node-a"] == "old"


def test_check_mode_reads_only(fake, capsys):
    fake.users.update({"node-a": "old"})
    args = base_args(fake, users=[{"name": "node-a", "password": "new"}, {"name": "node-b", "password": "pb"}])
    args["_ansible_check_mode"] = True
    args["_ansible_diff"] = True
    result, out = run_module(args, capsys)
    assert calls(fake) == [
        ("POST", "/api/registered_users", {"host": HOST}),
        ("POST", "/api/check_password", {"host": HOST, "user": "node-a", "password": "new"}),
    ]
    assert result["changed"] is True
    assert result["created"] == ["node-b@xmpp.test"]
    assert result["updated"] == ["node-a@xmpp.test"]
    assert fake.users == {"admin": ADMIN_PW, "node-a": "old"}
    assert result["diff"]["before"] == "node-b@xmpp.test: absent\nnode-a@xmpp.test: present\n"
    assert result["diff"]["after"] == "node-b@xmpp.test: present\nnode-a@xmpp.test: present (password changed)\n"
    assert "new" not in result["diff"]["after"].replace("present", "") and "pb" not in out


def test_absent_unregisters_only_existing(fake, capsys):
    fake.users.update({"node-a": "pa"})
    result, _ = run_module(base_args(fake, users=[{"name": "node-a"}, {"name": "node-z"}], state="absent"), capsys)
    assert calls(fake) == [
        ("POST", "/api/registered_users", {"host": HOST}),
        ("POST", "/api/unregister", {"host": HOST, "user": "node-a"}),
    ]
    assert result["removed"] == ["node-a@xmpp.test"] and result["unchanged"] == 1
    assert "node-a" not in fake.users


def test_absent_when_already_absent_is_no_change(fake, capsys):
    result, _ = run_module(base_args(fake, name="ghost", state="absent"), capsys)
    assert calls(fake) == [("POST", "/api/registered_users", {"host": HOST})]
    assert result["changed"] is False


def test_users_file_seed_format(fake, capsys, tmp_path):
    users_file = tmp_path / "users.txt"
    users_file.write_text("# agents\nagentid1,password1\n\n  Agent2@xmpp.test , pass,with,commas \n")
    result, _ = run_module(base_args(fake, users_file=str(users_file)), capsys)
    assert calls(fake) == [
        ("POST", "/api/registered_users", {"host": HOST}),
        ("POST", "/api/register", {"host": HOST, "user": "agentid1", "password": "password1"}),
        ("POST", "/api/register", {"host": HOST, "user": "agent2", "password": "pass,with,commas"}),
    ]
    assert result["created"] == ["agentid1@xmpp.test", "agent2@xmpp.test"]


def test_users_file_bad_line_fails_before_any_request(fake, capsys, tmp_path):
    users_file = tmp_path / "users.txt"
    users_file.write_text("agentid1\n")
    result, _ = run_module(base_args(fake, users_file=str(users_file)), capsys)
    assert result["failed"] is True and "line 1" in result["msg"]
    assert fake.requests == []


def test_register_conflict_is_treated_as_existing(fake, capsys):
    # registered_users says absent, then someone else creates it before our register.
    fake.force["registered_users"] = (200, ["admin"])
    fake.users["node-a"] = "pa"
    result, _ = run_module(base_args(fake, name="node-a", password="pa"), capsys)
    assert calls(fake) == [
        ("POST", "/api/registered_users", {"host": HOST}),
        ("POST", "/api/register", {"host": HOST, "user": "node-a", "password": "pa"}),
        ("POST", "/api/check_password", {"host": HOST, "user": "node-a", "password": "pa"}),
    ]
    assert result["changed"] is False


def test_server_down_is_a_distinct_failure(capsys):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    result, _ = run_module({"host": HOST, "api_url": "http://127.0.0.1:%d/api" % port, "api_user": ADMIN,
                            "api_password": ADMIN_PW, "name": "node-a", "state": "absent"}, capsys)
    assert result["failed"] is True
    assert result["reason"] == "unreachable"
    assert "not reachable" in result["msg"] and "127.0.0.1:%d" % port in result["msg"]
    assert "removed" not in result


def test_wrong_admin_password_is_a_distinct_failure(fake, capsys):
    result, out = run_module(base_args(fake, api_password="wrong", name="node-a", state="absent"), capsys)
    assert calls(fake) == [("POST", "/api/registered_users", {"host": HOST})]
    assert result["failed"] is True and result["reason"] == "auth"
    assert "cannot authenticate" in result["msg"] and "HTTP 401" in result["msg"]
    assert "wrong" not in out.replace("wrong admin password", "")


def test_forbidden_is_reported_as_auth_failure(fake, capsys):
    fake.force["registered_users"] = (403, {"status": "error", "code": 32, "message": "AccessRules: no"})
    result, _ = run_module(base_args(fake, name="node-a", password="x"), capsys)
    assert result["reason"] == "auth" and "HTTP 403" in result["msg"]


def test_admin_localpart_gets_the_domain(fake, capsys):
    result, _ = run_module(base_args(fake, api_user="admin", name="node-a", password="pa"), capsys)
    assert result["created"] == ["node-a@xmpp.test"]
    assert fake.requests[0][3] == AUTH


def test_unknown_virtual_host(fake, capsys):
    result, _ = run_module(base_args(fake, host="other.test", name="node-a", password="pa"), capsys)
    assert result["reason"] == "unknown_host" and "other.test" in result["msg"]


def test_other_api_error_names_the_command(fake, capsys):
    fake.force["register"] = (500, "internal_error")
    result, _ = run_module(base_args(fake, name="node-a", password="pa"), capsys)
    assert result["reason"] == "api_error"
    assert "register failed: HTTP 500" in result["msg"]


def test_present_requires_passwords(fake, capsys):
    result, _ = run_module(base_args(fake, users=[{"name": "node-a"}]), capsys)
    assert result["failed"] is True and "no password" in result["msg"]
    assert fake.requests == []


def test_duplicate_with_different_passwords_fails(fake, capsys):
    result, _ = run_module(base_args(fake, users=[{"name": "a", "password": "1"}, {"name": "A", "password": "2"}]),
                           capsys)
    assert result["failed"] is True and "twice" in result["msg"]


def test_foreign_domain_and_bad_characters_rejected():
    with pytest.raises(ValueError):
        xmpp_user.normalize_name("a@elsewhere", HOST)
    with pytest.raises(ValueError):
        xmpp_user.normalize_name("bad name", HOST)
    assert xmpp_user.normalize_name("Node-1@XMPP.test/res", HOST) == "node-1"


def test_mutually_exclusive_inputs(fake, capsys):
    result, _ = run_module(base_args(fake, name="a", password="p", users=[{"name": "b", "password": "q"}]), capsys)
    assert result["failed"] is True and "mutually exclusive" in result["msg"]


# Passwords long enough that Ansible's no_log masking leaves the messages readable.
PW_A, PW_OLD, PW_NEW = "pw-a-7Kq2", "pw-old-3Zr8", "pw-new-5Tx1"


# check_password's answers: 0 and 1 as ejabberd 23.01 and 24.12 give them (HTTP 200, body
# `0` or `1`), a JSON boolean read as the answer itself, anything else a failure naming
# the command. A match needs no change; a mismatch is followed by change_password.
@pytest.mark.parametrize(("answer", "matches"), [(0, True), (1, False), (True, True), (False, False)],
                         ids=["0-match", "1-mismatch", "true-match", "false-mismatch"])
def test_check_password_reads_each_answer_form(fake, capsys, answer, matches):
    fake.users.update({"node-a": PW_A})
    fake.force["check_password"] = (200, answer)
    result, _ = run_module(base_args(fake, name="node-a", password=PW_A), capsys)
    expected = [("POST", "/api/registered_users", {"host": HOST}),
                ("POST", "/api/check_password", {"host": HOST, "user": "node-a", "password": PW_A})]
    if not matches:
        expected.append(("POST", "/api/change_password", {"host": HOST, "user": "node-a", "newpass": PW_A}))
    assert calls(fake) == expected
    assert result["changed"] is not matches
    assert result["updated"] == ([] if matches else ["node-a@xmpp.test"])


@pytest.mark.parametrize("answer", ["0", 2, -1, None, {"res": 0}, [0]])
def test_check_password_other_answers_fail_naming_the_command(fake, capsys, answer):
    fake.users.update({"node-a": PW_A})
    fake.force["check_password"] = (200, answer)
    result, _ = run_module(base_args(fake, name="node-a", password=PW_A), capsys)
    assert result["failed"] is True and result["reason"] == "api_error"
    assert result["msg"].startswith("ejabberd API command check_password failed: HTTP 200: ")
    assert "change_password" not in [p.rsplit("/", 1)[-1] for _m, p, _b in calls(fake)]


@pytest.mark.parametrize(("answer", "accepted"), [(0, True), (True, True), (1, False), (False, False), ("0", False)],
                         ids=["0", "true", "1", "false", "string-0"])
def test_change_password_answers(fake, capsys, answer, accepted):
    fake.users.update({"node-a": PW_OLD})
    fake.force["change_password"] = (200, answer)
    result, _ = run_module(base_args(fake, name="node-a", password=PW_NEW), capsys)
    if accepted:
        assert result["changed"] is True and result["updated"] == ["node-a@xmpp.test"]
    else:
        assert result["reason"] == "api_error" and "change_password failed: HTTP 200" in result["msg"]
        assert "updated" not in result  # nothing was done before the failure


def test_reconnects_when_the_server_closed_a_kept_alive_connection(fake):
    # The server closes each connection after one answer (as a server closing idle
    # keep-alive connections does): the module reconnects and repeats the request once.
    fake.drop_idle = True
    transport = xmpp_user.HttpTransport(fake.url, 5)
    api = xmpp_user.EjabberdApi(transport, ADMIN, ADMIN_PW)
    assert api.registered_users(HOST) == {"admin"}
    assert api.register("node-a", HOST, "pa") is True
    assert api.check_password("node-a", HOST, "pa") is True
    transport.close()
    assert calls(fake) == [
        ("POST", "/api/registered_users", {"host": HOST}),
        ("POST", "/api/register", {"host": HOST, "user": "node-a", "password": "pa"}),
        ("POST", "/api/check_password", {"host": HOST, "user": "node-a", "password": "pa"}),
    ]
    assert fake.connections == 3


def test_documentation_is_valid_yaml():
    import yaml

    doc = yaml.safe_load(xmpp_user.DOCUMENTATION)
    spec = xmpp_user.build_module.__code__  # noqa: F841 - build_module exists
    assert set(doc["options"]) == {
        "host", "name", "password", "users", "users_file", "state", "update_password",
        "api_url", "api_user", "api_password", "api_timeout", "api_workers", "api_ca_path",
    }
    yaml.safe_load(xmpp_user.EXAMPLES)
    yaml.safe_load(xmpp_user.RETURN)


def test_a_failure_with_parallel_workers_is_reported_cleanly(fake, capsys):
    users = [{"name": "agent%03d" % i, "password": "pw"} for i in range(30)]
    real_answer = fake.answer

    def answer(command, args, auth):
        if command == "register" and args["user"] == "agent010":
            return 500, "internal_error"
        return real_answer(command, args, auth)

    fake.answer = answer
    result, _ = run_module(base_args(fake, users=users, api_workers=4), capsys)
    assert result["failed"] is True and result["reason"] == "api_error"
    assert "register failed: HTTP 500" in result["msg"]
    # What was created before the failure is reported, and it is really there.
    assert set(result["created"]) == {f"{u}@xmpp.test" for u in fake.users if u.startswith("agent")}
    assert "agent010@xmpp.test" not in result["created"]


def test_api_workers_must_be_positive(fake, capsys):
    result, _ = run_module(base_args(fake, name="a", password="secret-pw", api_workers=0), capsys)
    assert result["failed"] is True and "api_workers" in result["msg"]
    assert fake.requests == []


# Bad input: one line that names the problem (file, line, entry), before any request.

@pytest.mark.parametrize(("extra", "expected"), [
    ({"api_url": "http:///api"}, "api_url 'http:///api' has no host: give one, as in http://127.0.0.1:5281/api"),
    ({"api_url": "http://127.0.0.1:x/api"}, "api_url 'http://127.0.0.1:x/api' is not a valid URL"),
    ({"api_url": "ftp://127.0.0.1/api"}, "api_url must start with http:// or https://, got 'ftp://127.0.0.1/api'"),
    ({"api_url": "http://admin:pw@127.0.0.1:5281/api"}, "api_url must not carry credentials"),
    ({"api_timeout": -1}, "api_timeout must be 1 second or more (got -1)"),
    ({"api_timeout": 0}, "api_timeout must be 1 second or more (got 0)"),
    ({"api_url": "https://127.0.0.1:5281/api", "api_ca_path": "/nonexistent/edgelab-ca.pem"},
     "api_ca_path /nonexistent/edgelab-ca.pem does not exist"),
    ({"api_ca_path": "/etc/hostname"}, "api_ca_path is given but api_url"),
    ({"host": "bad domain"}, "host 'bad domain' is not an XMPP domain"),
    ({"name": "  "}, "name: the user name is empty"),
    ({"name": "x" * 1024}, "is 1024 bytes long (UTF-8): XMPP allows at most 1023 in a local part"),
    ({"name": "\u00e9" * 512}, "is 1024 bytes long (UTF-8): XMPP allows at most 1023 in a local part"),
    ({"name": "a\x00b"}, "contains a character XMPP forbids in a local part"),
])
def test_bad_input_is_one_clear_line_before_any_request(fake, capsys, extra, expected):
    args = base_args(fake, name="node-a", password="node-a-secret")
    args.update(extra)
    result, _ = run_module(args, capsys)
    assert result["failed"] is True
    assert expected in result["msg"], result["msg"]
    assert "\n" not in result["msg"] and "exception" not in result
    assert fake.requests == []


def test_a_ca_file_that_is_not_pem_is_named(fake, capsys, tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    result, _ = run_module(base_args(fake, api_url="https://127.0.0.1:1/api", api_ca_path=str(bad), name="a",
                                     password="a-secret"), capsys)
    assert result["failed"] is True
    assert result["msg"].startswith(f"api_ca_path {bad} cannot be used as a CA bundle")


def test_a_users_file_that_is_not_utf8_names_file_and_line(fake, capsys, tmp_path):
    users_file = tmp_path / "users.txt"
    users_file.write_bytes(b"agent1,secret-1\nagent\xff2,secret-2\n")
    result, _ = run_module(base_args(fake, users_file=str(users_file)), capsys)
    assert result["failed"] is True
    assert result["msg"] == f"users_file {users_file} line 2 is not UTF-8 text (byte 0xff at column 6)"
    assert fake.requests == []


def test_a_users_file_line_with_an_empty_name_gives_the_line(fake, capsys, tmp_path):
    users_file = tmp_path / "users.txt"
    users_file.write_text("# agents\nagent1,secret-1\n  ,secret-2\n")
    result, _ = run_module(base_args(fake, users_file=str(users_file)), capsys)
    assert result["msg"] == f"users_file {users_file} line 3: the user name is empty"
    assert fake.requests == []
    users_file.write_text("agent1,secret-1\nagent2,\n")
    result, _ = run_module(base_args(fake, users_file=str(users_file)), capsys)
    assert result["msg"] == (f"users_file {users_file} line 2: user 'agent2' has no password "
                             "(required with state=present)")


def test_a_users_list_entry_with_an_empty_name_gives_its_index(fake, capsys):
    users = [{"name": "a", "password": "secret-1"}, {"name": "", "password": "secret-2"}]
    result, _ = run_module(base_args(fake, users=users), capsys)
    assert result["msg"] == "users[1]: the user name is empty"
    assert fake.requests == []


def test_the_longest_local_part_is_accepted(fake, capsys, tmp_path):
    longest = "x" * 1023
    users_file = tmp_path / "users.txt"
    users_file.write_bytes(b"\xef\xbb\xbf" + f"{longest},secret-1\n".encode())  # with a byte order mark
    result, _ = run_module(base_args(fake, users_file=str(users_file)), capsys)
    assert calls(fake)[1] == ("POST", "/api/register", {"host": HOST, "user": longest, "password": "secret-1"})
    assert result["created"] == [f"{longest}@{HOST}"]


def test_credentials_in_api_url_are_refused_and_not_in_the_message(fake, capsys):
    for url in ("ftp://admin:url-secret-1@127.0.0.1/api", "http://admin:url-secret-1@127.0.0.1:x/api"):
        result, _ = run_module(base_args(fake, api_url=url, name="node-a", password="node-a-secret"), capsys)
        assert result["msg"].startswith("api_url must not carry credentials")
        assert "url-secret-1" not in result["msg"]
    assert fake.requests == []


def test_update_password_is_not_taken_for_a_secret(fake, capsys):
    # Its name contains "password": without an explicit no_log=False Ansible warns on every run.
    result, _ = run_module(base_args(fake, name="node-a", password="node-a-secret"), capsys)
    assert result["changed"] is True
    assert "warnings" not in result
