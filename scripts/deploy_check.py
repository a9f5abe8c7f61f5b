#!/usr/bin/env python3
"""Checks of the deployment kit for scripts/deploy-test.sh (standard library
plus PyYAML only).

  deploy_check.py static HELP_FILE     structure of deploy/: compose services,
                                       every OPMAS_* variable of the units, the
                                       env example and compose is an option in
                                       HELP_FILE (`opmas <cmd> --help` output),
                                       alert rules, Grafana JSON
  deploy_check.py series METRICS_FILE  every series and label the alert rules
                                       and the dashboard use is in METRICS_FILE
                                       (a real /metrics scrape)
  deploy_check.py nats-perm HOST PORT USER PASSWORD SUBJECT
                                       exit 0 if USER may not publish to
                                       SUBJECT (the server answers a
                                       permissions violation), 1 otherwise
  deploy_check.py nats-badpw HOST PORT USER
                                       exit 0 if USER with a wrong password is
                                       refused
  deploy_check.py jwt SECRET_FILE KID ROLE   an HS256 JWT for the API
  deploy_check.py ports N              N free loopback TCP ports
  deploy_check.py same A.json B.json   the two API answers are equal, apart
                                       from `uptime_seconds` (time-dependent)
"""

import base64
import hashlib
import hmac
import json
import re
import socket
import sys
import time
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
# Not options of opmas: compose interpolation variables of the host.
COMPOSE_HOST_VARS = {"OPMAS_DB_PASSWORD", "OPMAS_NATS_PASSWORD"}
# Series Prometheus adds itself, and PromQL words that look like names.
PROMQL_WORDS = {
    "up", "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "bool", "offset", "le", "inf", "nan",
}


def fail(msg):
    print(f"deploy_check: {msg}", file=sys.stderr)
    sys.exit(1)


def env_names_in_units():
    names = {}
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        for line in unit.read_text().splitlines():
            if line.startswith("Environment="):
                name = line.split("=", 2)[1]
                names[name] = unit.name
    return names


def static(help_file):
    options = set(re.findall(r"\[env: (OPMAS_[A-Z_]+)", Path(help_file).read_text()))
    if len(options) < 20:
        fail(f"only {len(options)} options in {help_file}: not `opmas --help` output?")
    used = env_names_in_units()
    env_example = DEPLOY / "systemd" / "opmas.env.example"
    for line in env_example.read_text().splitlines():
        if line and not line.startswith("#"):
            used[line.split("=", 1)[0]] = env_example.name
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose.get("services", {})
    for needed in ("nats", "postgres", "opmas"):
        if needed not in services:
            fail(f"docker-compose.yml has no service `{needed}`")
    for name, svc in services.items():
        if "image" not in svc and "build" not in svc:
            fail(f"compose service {name} has neither image nor build")
        for dep in svc.get("depends_on", {}) or {}:
            if dep not in services:
                fail(f"compose service {name} depends on unknown {dep}")
        for vol in svc.get("volumes", []) or []:
            src = vol.split(":", 1)[0]
            if not src.startswith((".", "/")) and src not in (compose.get("volumes") or {}):
                fail(f"compose service {name} uses undeclared volume {src}")
        env = svc.get("environment") or {}
        if "opmas" in str(svc.get("image", "")):
            for key in env:
                used[key] = f"docker-compose.yml:{name}"
            if not env.get("OPMAS_DATABASE_URL") or not env.get("OPMAS_NATS_URL"):
                fail(f"compose service {name} lacks OPMAS_DATABASE_URL / OPMAS_NATS_URL")
    opmas_cmd = services["opmas"].get("command", [])
    if "--roles" in opmas_cmd:
        roles = opmas_cmd[opmas_cmd.index("--roles") + 1].split(",")
        bad = set(roles) - {"api", "relay", "projector", "supervisor"}
        if bad:
            fail(f"compose opmas --roles has unknown roles {bad}")
    for name, where in sorted(used.items()):
        if name.startswith("OPMAS_") and name not in options and name not in COMPOSE_HOST_VARS:
            fail(f"{where}: {name} is not an option of opmas")
    rules = yaml.safe_load((DEPLOY / "prometheus" / "opmas-alerts.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    wanted = {"OpmasAgentFailed", "OpmasAgentCrashLooping", "OpmasAgentHeartbeatLost",
              "OpmasProjectionConsumerLag", "OpmasRelayBacklog"}
    missing = wanted - {r.get("alert") for r in alerts}
    if missing:
        fail(f"alert rules lack {sorted(missing)}")
    for r in alerts:
        if not r.get("expr") or "severity" not in r.get("labels", {}) or "summary" not in r.get("annotations", {}):
            fail(f"alert {r.get('alert')} lacks expr, labels.severity or annotations.summary")
    dash = json.loads((DEPLOY / "grafana" / "opmas-dashboard.json").read_text())
    ids = [p["id"] for p in dash["panels"]]
    if len(ids) != len(set(ids)) or not all(p.get("targets") for p in dash["panels"]):
        fail("dashboard panels need unique ids and at least one target each")
    print(f"deploy_check: static ok ({len(used)} variables, {len(services)} compose services, "
          f"{len(alerts)} alerts, {len(ids)} panels)")


def parse_exposition(text):
    """name -> set of label names, for every sample line."""
    series = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*?)\})?\s", line)
        if not m:
            continue
        labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(3) or ""))
        series.setdefault(m.group(1), set()).update(labels)
    return series


def expressions():
    rules = yaml.safe_load((DEPLOY / "prometheus" / "opmas-alerts.yml").read_text())
    for g in rules["groups"]:
        for r in g["rules"]:
            yield f"alert {r['alert']}", r["expr"]
    dash = json.loads((DEPLOY / "grafana" / "opmas-dashboard.json").read_text())
    for p in dash["panels"]:
        for t in p["targets"]:
            yield f"panel {p['title']!r}", t["expr"]


def series(metrics_file):
    exported = parse_exposition(Path(metrics_file).read_text())
    if not any(n.startswith("opmas_") for n in exported):
        fail(f"{metrics_file} has no opmas_ series: not a /metrics scrape?")
    n = 0
    for where, expr in expressions():
        n += 1
        text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values out of the way
        used = set()
        for m in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?", text):
            name, matchers = m.group(1), m.group(2) or ""
            after = text[m.end():m.end() + 1]
            if after == "(" or name in PROMQL_WORDS or re.fullmatch(r"\d+[smhdwy]?", name):
                if name == "up":
                    used.add(name)
                continue
            if name.startswith("opmas_"):
                if name not in exported:
                    fail(f"{where}: {name} is not exported by /metrics")
                used.add(name)
                for label in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*[=!]~?", matchers):
                    if label not in exported[name] | {"job", "instance"}:
                        fail(f"{where}: {name} has no label {label}")
        if not used:
            fail(f"{where}: uses no series of /metrics: {expr}")
        # labels used in `by (...)` must exist on some series used
        labels = set().union(*(exported.get(u, set()) for u in used)) | {"job", "instance", "le"}
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", text):
            for label in filter(None, (s.strip() for s in group.split(","))):
                if label not in labels:
                    fail(f"{where}: groups by {label}, a label of none of {sorted(used)}")
    print(f"deploy_check: {n} expressions use only exported series and labels")


def nats_session(host, port, user=None, password=None):
    s = socket.create_connection((host, int(port)), timeout=5)
    f = s.makefile("rb")
    info = f.readline()
    if not info.startswith(b"INFO"):
        fail(f"no INFO from nats-server: {info!r}")
    opts = {"verbose": False, "pedantic": False, "protocol": 1}
    if user:
        opts.update(user=user, **{"pass": password})
    s.sendall(b"CONNECT " + json.dumps(opts).encode() + b"\r\nPING\r\n")
    return s, f


def nats_perm(host, port, user, password, subject):
    s, f = nats_session(host, port, user, password)
    if f.readline().strip() != b"PONG":
        fail(f"{user} could not log in")
    s.sendall(f"PUB {subject} 2\r\nhi\r\nPING\r\n".encode())
    line = f.readline()
    if b"Permissions Violation" in line:
        print(f"deploy_check: {user} may not publish to {subject}: {line.decode().strip()}")
        return
    fail(f"{user} published to {subject}: {line!r}")


def nats_badpw(host, port, user):
    s, f = nats_session(host, port, user, "not-the-password")
    line = f.readline()
    if b"Authorization Violation" in line:
        print(f"deploy_check: {user} with a wrong password is refused")
        return
    fail(f"{user} with a wrong password was accepted: {line!r}")


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(secret_file, kid, role):
    secret = Path(secret_file).read_bytes()
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    claims = {"sub": f"deploy-test-{role}", "role": role, "iss": "opmas", "aud": "opmas-api",
              "exp": int(time.time()) + 600}
    body = b64(json.dumps(claims).encode())
    sig = b64(hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest())
    print(f"{header}.{body}.{sig}")


def ports(n):
    socks = []
    for _ in range(int(n)):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks))


def strip(value):
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if k != "uptime_seconds"}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def same(a, b):
    left, right = strip(json.loads(Path(a).read_text())), strip(json.loads(Path(b).read_text()))
    if left != right:
        fail(f"{a} and {b} differ:\n{json.dumps(left, indent=1)[:3000]}\n---\n{json.dumps(right, indent=1)[:3000]}")


COMMANDS = {"static": static, "series": series, "nats-perm": nats_perm, "nats-badpw": nats_badpw,
            "jwt": jwt, "ports": ports, "same": same}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        fail(__doc__)
    COMMANDS[sys.argv[1]](*sys.argv[2:])
