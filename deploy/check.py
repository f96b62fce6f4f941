#!/usr/bin/env python3
"""The Python half of deploy/check.sh: checks that need more than a validator's exit code.

    python3 deploy/check.py STEP [ARGS...]

Steps (each exits non-zero with a FAIL line on the first problem):
  systemd-smoke TAMIS   run the unit's ExecStart argv (binary and config swapped for a test
                        copy on free loopback ports, plus a route to a local upstream), its
                        ExecReload (SIGHUP: success, then a broken file: refused, still
                        serving), the container HEALTHCHECK probe, then SIGTERM: exit 0. The
                        shipped disk_dir is the unit's CacheDirectory (swapped for a scratch
                        directory, where the proxied miss must land on disk). Under
                        strace: every system call made is one the unit's SystemCallFilter
                        allows, every socket one RestrictAddressFamilies allows, and no memory
                        is writable and executable (MemoryDenyWriteExecute)
  configs TAMIS         `tamis check` on deploy/container/tamis.toml and on the ConfigMap's text;
                        both trust a terminator (server.trusted_proxies)
  kubernetes            the Prometheus Operator resources (ServiceMonitor, PrometheusRule)
                        against the operator's CRD models, unknown fields refused; the
                        PrometheusRule's groups equal deploy/prometheus/tamis.rules.yml's; the
                        ConfigMap's disk_dir a writable emptyDir whose sizeLimit leaves room
                        above max_disk_bytes, within the ephemeral-storage request and limit
  metrics-names OUT     every metric the rules and the Grafana dashboard query exists in
                        src/metrics.rs; the dashboard's structure; writes the dashboard's
                        queries as a rule file to OUT for `promtool check rules` (PromQL syntax)
  dockerfile            static review of deploy/container/Dockerfile and .dockerignore; the
                        container config's disk_dir is a VOLUME the runtime user owns
  frontends             nginx (nginx -t, then a real nginx on loopback) and Caddy (caddy
                        validate, caddy fmt, then a real Caddy) in front of a recording stub:
                        every tamis prefix reaches it with the path untouched and, as shipped,
                        X-Forwarded-For = exactly the connection's address (the client's own
                        value replaced; Caddy's too when Caddy trusts its client) and no other
                        client-address header; with the opt-out their comments document, none
                        at all; everything else stays with the site
  pairing TAMIS         nginx and Caddy as shipped in front of a real tamis with a per-client
                        rate limit and config/tamis.toml's trusted_proxies: two visitors, two
                        buckets; with nginx's opt-out, or without trusted_proxies, one shared
                        bucket; never a visitor's address at the upstream or in tamis's log
"""

import fnmatch
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"

# The public prefixes of the shipped config, as the nginx and Caddy files route them.
PROBES = [
    "/fonts/css2?family=Roboto:wght@400;700&display=swap",
    "/fonts/files/s/roboto/v32/KFOmCnqEu92Fr1Mu4mxK.woff2",
    "/bunny-fonts/css?family=roboto:400,700",
    "/tiles/osm/12/2048/1361.png",
    "/cdn/jquery@3.7.1/dist/jquery.min.js",
    "/cdn/a%2Fb/%2e%2e/x.js",
    "/cdnjs/leaflet/1.9.4/leaflet.min.js",
    "/gtag/js?id=G-XXXXXXX",
    "/a/g/collect?v=2&tid=G-XXXXXXX&cid=123.456&dl=https%3A%2F%2Fsite.example%2F",
    "/.well-known/tamis",
    "/.well-known/tamis?format=json",
]
# Paths that belong to the site, not to tamis.
NOT_TAMIS = ["/", "/about", "/fontsX/x.css", "/photo.png", "/.well-known/tamisX"]
CLIENT_ADDRESS_HEADERS = [
    "x-forwarded-for",
    "x-real-ip",
    "forwarded",
    "x-forwarded-proto",
    "x-forwarded-host",
    "true-client-ip",
    "via",
]
# The client-address line of each front end as shipped (X-Forwarded-For = the connection's
# address) and the opt-out its comments document (no address at all).
NGINX_DEFAULT = "set $tamis_client_address $remote_addr;"
NGINX_OPT_OUT = 'set $tamis_client_address "";'
CADDY_DEFAULT = "\t\theader_up X-Forwarded-For {remote_host}\n"
CADDY_OPT_OUT = "\t\theader_up -X-Forwarded-For\n"
# `caddy validate` calls CADDY_DEFAULT "Unnecessary" (true only while Caddy's own trusted_proxies
# is unset): the one warning tolerated.
CADDY_KNOWN_WARNING = "Unnecessary header_up X-Forwarded-For"


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def ok(msg):
    print(f"ok: {msg}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            fail(f"{what} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    fail(f"{what} did not listen on 127.0.0.1:{port} within {timeout}s")


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def http_get(url, timeout=3.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


# ---------------------------------------------------------------- systemd-smoke


def unit_directives(path):
    out = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        k, _, v = line.partition("=")
        out.setdefault(k.strip(), []).append(v.strip())
    return out


def metric_value(text, name, labels):
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.split()[-1])
    return None


def gauge(text, name):
    """The value of a metric without labels, or None."""
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[-1])
    return None


def wait_metric(admin, name, labels, value, proc, timeout=5.0):
    end = time.monotonic() + timeout
    got = None
    while time.monotonic() < end:
        if proc.poll() is not None:
            fail(f"tamis exited with {proc.returncode}")
        _, text = http_get(f"http://{admin}/metrics")
        got = metric_value(text, name, labels)
        if got == value:
            return
        time.sleep(0.05)
    fail(f"{name}{labels} is {got}, expected {value}")


def syscall_set(*groups):
    """The system calls in systemd's named sets (nested sets expanded)."""
    names = set()
    for g in groups:
        out = subprocess.run(["systemd-analyze", "syscall-filter", g],
                             capture_output=True, text=True, check=True).stdout
        for line in out.splitlines()[1:]:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            names |= syscall_set(line) if line.startswith("@") else {line}
    return names


def check_sandbox(unit, trace):
    """What tamis did under strace, against the unit's SystemCallFilter, RestrictAddressFamilies
    and MemoryDenyWriteExecute (systemd does not run here, so the filters cannot be applied)."""
    d = unit_directives(unit)
    allowed, denied = set(), set()
    for f in d["SystemCallFilter"]:
        if f.startswith("~"):
            denied |= syscall_set(*f[1:].split())
        else:
            allowed |= syscall_set(*f.split())
    allowed -= denied
    families = set(d["RestrictAddressFamilies"][0].split())
    used, bad_families, wx = set(), set(), []
    for line in trace.read_text().splitlines():
        m = re.match(r"^\d+\s+(?:<\.\.\. )?([a-z_0-9]+)(?:\(| resumed)", line)
        if not m:
            continue
        used.add(m.group(1))
        fam = re.match(r"^\d+\s+socket\((AF_[A-Z0-9]+)", line)
        if fam and fam.group(1) not in families:
            bad_families.add(fam.group(1))
        if re.search(r"\b(mmap|mprotect|pkey_mprotect)\(", line) and "PROT_EXEC" in line and (
                "PROT_WRITE" in line or m.group(1) != "mmap"):
            wx.append(line)
    used.discard("execve")  # strace's own exec of tamis, before any filter applies
    if not used:
        fail(f"strace recorded no system call in {trace}")
    if used - allowed:
        fail(f"tamis made system calls the unit's SystemCallFilter refuses: {sorted(used - allowed)}")
    if bad_families:
        fail(f"tamis opened sockets outside RestrictAddressFamilies: {sorted(bad_families)}")
    if wx:
        fail("tamis made memory writable and executable (MemoryDenyWriteExecute):\n" + "\n".join(wx[:5]))
    ok(f"strace: the {len(used)} system calls tamis made are all allowed by SystemCallFilter; "
       f"sockets only {', '.join(sorted(families))}; no writable+executable memory")


def strace_child(pid, program, timeout=5.0):
    """The pid of `program` run by strace (which also forks short-lived probes of its own)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            kids = []
        for kid in kids:
            try:
                if os.path.realpath(f"/proc/{kid}/exe") == os.path.realpath(program):
                    return int(kid)
            except OSError:
                pass
        time.sleep(0.02)
    fail(f"strace did not start {program} within {timeout}s")


def systemd_smoke(tamis):
    unit = DEPLOY / "systemd" / "tamis.service"
    d = unit_directives(unit)
    start = shlex.split(d["ExecStart"][0])
    reload_cmd = d["ExecReload"][0]
    if start[0] != "/usr/bin/tamis" or start[-1] != "run" or "--config" not in start:
        fail(f"unexpected ExecStart {start}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        http_port, admin_port = free_port(), free_port()
        shipped = (ROOT / "config" / "tamis.toml").read_text()
        for a, b in [("127.0.0.1:8080", f"127.0.0.1:{http_port}"),
                     ("127.0.0.1:8081", f"127.0.0.1:{admin_port}")]:
            if a not in shipped:
                fail(f"config/tamis.toml no longer listens on {a}: update deploy/")
            shipped = shipped.replace(a, b)
        # The disk tier: the unit's CacheDirectory= is /var/cache/<name>, where the shipped
        # config keeps it; here a scratch directory, so that the disk tier's system calls (write,
        # fsync, rename, the start-up loader's directory reads) run under strace too.
        disk_dir = re.search(r'^disk_dir = "([^"]*)"', shipped, re.M)
        cache_dirs = d.get("CacheDirectory", [])
        if disk_dir:
            if cache_dirs != ["tamis"] or disk_dir.group(1) != "/var/cache/tamis":
                fail(f"config/tamis.toml keeps its disk cache in {disk_dir.group(1)}, the unit's "
                     f"CacheDirectory= is {cache_dirs}: expected /var/cache/tamis and tamis")
            shipped = shipped.replace(disk_dir.group(0), f'disk_dir = "{tmp / "cache"}"')
        # A route to a local upstream (by name: the resolver runs too) to exercise the proxy path.
        upstream = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
        threading.Thread(target=upstream.serve_forever, daemon=True).start()
        shipped += (f'\n[[route]]\nname = "smoke"\nkind = "static"\nprefix = "/smoke/"\n'
                    f'upstream = "http://localhost:{upstream.server_address[1]}/"\n'
                    'jurisdiction = "eu"\n' + ("disk_cache = true\n" if disk_dir else ""))
        conf = tmp / "tamis.toml"
        conf.write_text(shipped)
        argv = [str(tamis)] + start[1:]
        argv[argv.index("--config") + 1] = str(conf)
        env = dict(os.environ)
        for assignment in d.get("Environment", []):
            for kv in shlex.split(assignment):
                k, _, v = kv.partition("=")
                env[k] = v
        trace = tmp / "strace.out"
        strace = shutil.which("strace")
        if strace:
            argv = [strace, "-f", "-qq", "-o", str(trace), "--"] + argv
        log = open(tmp / "tamis.log", "w+")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        main_pid = strace_child(proc.pid, tamis) if strace else proc.pid
        try:
            wait_port(admin_port, proc, "tamis")
            admin = f"127.0.0.1:{admin_port}"
            status, body = http_get(f"http://{admin}/healthz")
            if (status, body) != (200, "ok\n"):
                fail(f"/healthz answered {status} {body!r}")
            for _ in range(2):
                status, body = http_get(f"http://127.0.0.1:{http_port}/smoke/x.js")
                if (status, body) != (200, "tamis\n"):
                    fail(f"GET /smoke/x.js through tamis answered {status} {body!r}")
            if len(Recorder.seen) != 1:
                fail(f"the local upstream got {len(Recorder.seen)} requests for one miss and one hit")
            ok(f"ExecStart argv runs: {' '.join(start[1:])} (admin {admin}; a miss and a hit proxied)")
            if disk_dir:
                # The miss was written to the disk tier (in the background: wait for it).
                end = time.monotonic() + 5
                while time.monotonic() < end:
                    _, text = http_get(f"http://{admin}/metrics")
                    if (gauge(text, "tamis_cache_disk_entries") or 0) >= 1:
                        break
                    time.sleep(0.05)
                entries = gauge(text, "tamis_cache_disk_entries")
                files = [f for f in (tmp / "cache").rglob("*") if f.is_file()]
                if not entries or not files:
                    fail(f"the disk tier stored nothing: tamis_cache_disk_entries {entries}, "
                         f"{len(files)} files under {tmp / 'cache'}")
                ok(f"disk tier: {len(files)} file(s) written under the scratch cache directory, "
                   f"tamis_cache_disk_entries {entries:.0f}")

            # The container's HEALTHCHECK probe, built as the Dockerfile builds it.
            probe = tmp / "tamis-healthcheck"
            subprocess.run(["rustc", "--edition", "2021", "-C", "opt-level=2", "-o", str(probe),
                            str(DEPLOY / "container" / "healthcheck.rs")], check=True)
            r = subprocess.run([str(probe), admin], capture_output=True, text=True)
            if r.returncode != 0:
                fail(f"tamis-healthcheck {admin} exited {r.returncode}: {r.stderr}")
            r = subprocess.run([str(probe), f"127.0.0.1:{http_port}"], capture_output=True, text=True)
            if r.returncode == 0:
                fail("tamis-healthcheck passed against the public listener (no /healthz there)")
            r = subprocess.run([str(probe), f"127.0.0.1:{free_port()}"], capture_output=True, text=True)
            if r.returncode == 0:
                fail("tamis-healthcheck passed against a closed port")
            ok("tamis-healthcheck: 0 on the admin /healthz, 1 on the public listener and on a closed port")

            def exec_reload():
                cmd = shlex.split(reload_cmd.replace("$MAINPID", str(main_pid)))
                subprocess.run(cmd, check=True)

            exec_reload()
            wait_metric(admin, "tamis_config_reloads_total", {"result": "success"}, 1.0, proc)
            conf.write_text(shipped + "\n[[route]]\nname = \"broken\"\n")
            exec_reload()
            wait_metric(admin, "tamis_config_reloads_total", {"result": "failure"}, 1.0, proc)
            status, _ = http_get(f"http://{admin}/healthz")
            if status != 200 or proc.poll() is not None:
                fail("tamis stopped serving after a refused reload")
            ok(f"ExecReload ({reload_cmd}): reload counted; a broken file refused, still serving")

            os.kill(main_pid, signal.SIGTERM)
            try:
                code = proc.wait(15)  # strace exits with its child's status
            except subprocess.TimeoutExpired:
                fail("tamis did not exit within 15s of SIGTERM")
            if code != 0:
                fail(f"tamis exited {code} after SIGTERM (Restart=on-failure would restart it)")
            ok("SIGTERM (systemctl stop): exit 0")
            if strace:
                check_sandbox(unit, trace)
            else:
                fail("strace is missing: cannot check the unit's system call and socket filters")
        except SystemExit:
            log.seek(0)
            sys.stderr.write("--- tamis log ---\n" + log.read())
            raise
        finally:
            stop(proc)
            upstream.shutdown()


# ---------------------------------------------------------------- configs


def configmap_toml(salt, token):
    import yaml

    cm = yaml.safe_load((DEPLOY / "kubernetes" / "configmap.yaml").read_text())
    text = cm["data"]["tamis.toml"]
    for want, path in [('salt_file = "/etc/tamis-secrets/pseudonym.salt"', salt),
                       ('token_file = "/etc/tamis-admin/token"', token)]:
        if want not in text:
            fail(f"configmap.yaml: expected {want} (the Secret mounted by deployment.yaml)")
        text = text.replace(want, f'{want.split(" = ")[0]} = "{path}"')
    return text


def configs(tamis):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        salt = tmp / "pseudonym.salt"
        salt.write_bytes(os.urandom(32))
        salt.chmod(0o600)
        token = tmp / "admin.token"
        token.write_text(os.urandom(18).hex())
        token.chmod(0o600)
        cm = tmp / "configmap-tamis.toml"
        cm.write_text(configmap_toml(salt, token))
        for name, path in [("deploy/container/tamis.toml", DEPLOY / "container" / "tamis.toml"),
                           ("the ConfigMap's tamis.toml", cm)]:
            r = subprocess.run([str(tamis), "check", "--config", str(path)],
                               capture_output=True, text=True)
            if r.returncode != 0:
                fail(f"tamis check on {name}:\n{r.stdout}{r.stderr}")
            first = r.stdout.splitlines()[0] if r.stdout else ""
            if not re.search(r": valid\b", first):
                fail(f"tamis check on {name} printed {first!r}")
            routes = list(dict.fromkeys(re.findall(r"^route (\S+)", r.stdout, re.M)))
            trusted = re.search(r"^\s*trusted_proxies\s*=\s*(\[.+\])", path.read_text(), re.M)
            if not trusted or not json.loads(trusted.group(1)):
                fail(f"{name}: no server.trusted_proxies: behind its terminator (which passes the "
                     "visitor's address) every visitor would share one rate-limit bucket")
            ok(f"tamis check {name}: valid, routes {', '.join(routes)}; trusted_proxies {trusted.group(1)}")


# ---------------------------------------------------------------- kubernetes CRDs


def unknown_fields(src, dumped, path=""):
    """Keys of `src` that the model dropped: pydantic ignores unknown fields, so a typo would
    otherwise pass."""
    out = []
    if isinstance(src, dict):
        if not isinstance(dumped, dict):
            return [path or "."]
        for k, v in src.items():
            if k not in dumped:
                out.append(f"{path}.{k}")
            else:
                out += unknown_fields(v, dumped[k], f"{path}.{k}")
    elif isinstance(src, list):
        for i, (a, b) in enumerate(zip(src, dumped)):
            out += unknown_fields(a, b, f"{path}[{i}]")
    return out


def kubernetes():
    import yaml
    from cloudcoil.models.prometheus_operator import v1

    kinds = {"ServiceMonitor": v1.ServiceMonitor, "PrometheusRule": v1.PrometheusRule}
    seen = {}
    for f in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if not doc or not doc.get("apiVersion", "").startswith("monitoring.coreos.com/"):
                continue
            kind = doc.get("kind")
            if doc["apiVersion"] != "monitoring.coreos.com/v1" or kind not in kinds:
                fail(f"{f.name}: no schema for {doc['apiVersion']} {kind}")
            try:
                model = kinds[kind].model_validate(doc)
            except Exception as e:  # pydantic.ValidationError
                fail(f"{f.name}: {kind} does not validate:\n{e}")
            extra = unknown_fields(doc, model.model_dump(by_alias=True, exclude_none=True, mode="json"))
            if extra:
                fail(f"{f.name}: {kind} fields unknown to the CRD: {', '.join(extra)}")
            seen[kind] = doc
            ok(f"{f.name}: {kind} valid against the prometheus-operator CRD model (strict)")
    for kind in kinds:
        if kind not in seen:
            fail(f"no {kind} in deploy/kubernetes")
    rules = yaml.safe_load((DEPLOY / "prometheus" / "tamis.rules.yml").read_text())
    if seen["PrometheusRule"]["spec"]["groups"] != rules["groups"]:
        fail("deploy/kubernetes/prometheusrule.yaml spec.groups differ from "
             "deploy/prometheus/tamis.rules.yml groups: copy the file's groups over")
    ok("prometheusrule.yaml carries exactly the groups of tamis.rules.yml")
    sm = seen["ServiceMonitor"]["spec"]
    svc = [d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / "service.yaml").read_text())
           if all(d["metadata"].get("labels", {}).get(k) == v
                  for k, v in sm["selector"]["matchLabels"].items())]
    if len(svc) != 1:
        fail(f"the ServiceMonitor's selector matches {len(svc)} Services, expected tamis-admin")
    ports = {p["name"] for p in svc[0]["spec"]["ports"]}
    for ep in sm["endpoints"]:
        if ep["port"] not in ports:
            fail(f"ServiceMonitor endpoint port {ep['port']} is not a port of {svc[0]['metadata']['name']}")
    if svc[0]["metadata"]["labels"].get(sm.get("jobLabel")) != "tamis":
        fail("ServiceMonitor jobLabel must give job=\"tamis\" (the alert rules expect it)")
    ok(f"ServiceMonitor selects Service {svc[0]['metadata']['name']} port(s) "
       f"{', '.join(e['port'] for e in sm['endpoints'])}, job=\"tamis\"")
    disk_volume()


def quantity(q):
    """Bytes in a Kubernetes quantity (1536Mi, 2Gi, 1G) or a tamis size ("1 GiB", 1073741824)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*", str(q))
    if not m:
        fail(f"cannot read the size {q!r}")
    unit = (m.group(2) or "").rstrip("B")
    power = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit.rstrip("i")]
    return float(m.group(1)) * (1024 if unit.endswith("i") else 1000) ** power


def disk_volume():
    """The disk tier in Kubernetes: the ConfigMap's disk_dir is a writable volume of the
    Deployment, its emptyDir's sizeLimit leaves room above max_disk_bytes for block rounding
    (the kubelet evicts the pod above it), and ephemeral-storage covers it."""
    import yaml

    text = configmap_toml("/s", "/t")
    disk_dir = re.search(r'^disk_dir = "([^"]+)"', text, re.M)
    max_disk = re.search(r'^max_disk_bytes = "?([^"\n#]+?)"?\s*(?:#.*)?$', text, re.M)
    if not disk_dir or not max_disk:
        fail("configmap.yaml: no cache.disk_dir and max_disk_bytes")
    dep = yaml.safe_load((DEPLOY / "kubernetes" / "deployment.yaml").read_text())
    pod = dep["spec"]["template"]["spec"]
    (c,) = [c for c in pod["containers"] if c["name"] == "tamis"]
    mounts = [m for m in c["volumeMounts"] if m["mountPath"] == disk_dir.group(1)]
    if len(mounts) != 1 or mounts[0].get("readOnly"):
        fail(f"deployment.yaml: no writable volume at {disk_dir.group(1)} (cache.disk_dir)")
    (vol,) = [v for v in pod["volumes"] if v["name"] == mounts[0]["name"]]
    if "emptyDir" not in vol or vol["emptyDir"].get("medium"):
        fail(f"deployment.yaml: volume {vol['name']} is not an emptyDir on disk")
    limit = quantity(vol["emptyDir"].get("sizeLimit", "0"))
    want = quantity(max_disk.group(1))
    if not 1.25 * want <= limit <= 2 * want:
        fail(f"deployment.yaml: the cache emptyDir's sizeLimit ({limit:.0f} B) is not 1.25 to 2 x "
             f"max_disk_bytes ({want:.0f} B): room for block rounding, without wasting the node's disk")
    res = c["resources"]
    req = quantity(res["requests"].get("ephemeral-storage", "0"))
    lim = quantity(res["limits"].get("ephemeral-storage", "0"))
    if not limit <= req <= lim:
        fail("deployment.yaml: ephemeral-storage request/limit must cover the cache's sizeLimit")
    ok(f"deployment.yaml: disk tier at {disk_dir.group(1)} on emptyDir {vol['name']}, sizeLimit "
       f"{limit / want:.2f} x max_disk_bytes ({max_disk.group(1)}); ephemeral-storage "
       f"{res['requests']['ephemeral-storage']}/{res['limits']['ephemeral-storage']}")


# ---------------------------------------------------------------- metric names


def known_metrics():
    """Series names tamis exports (histograms as their _bucket, _sum and _count), plus `up`."""
    src = (ROOT / "src" / "metrics.rs").read_text()
    names = set(re.findall(r'"(tamis_[a-z0-9_]+)"', src))
    hist = set(re.findall(r'buckets\(\s*"(tamis_[a-z0-9_]+)"', src))
    if not names or not hist:
        fail("no metric names found in src/metrics.rs")
    names -= hist
    for h in hist:
        names |= {h + "_bucket", h + "_sum", h + "_count"}
    # The standard process metrics (prometheus::process_collector).
    process = {"process_resident_memory_bytes", "process_virtual_memory_bytes",
               "process_cpu_seconds_total", "process_open_fds", "process_max_fds",
               "process_start_time_seconds", "process_threads"}
    if "ProcessCollector" not in src:
        process = set()
    return names | {"up"} | process


def referenced(expr):
    """Plain metric names (tamis_*) and recording-rule names (level:metric:ops) in a query."""
    plain = set(re.findall(r"(?<![\w:])((?:tamis|process)_[a-z0-9_]+)(?![\w:])", expr))
    recorded = set(re.findall(r"(?<![\w:])([a-z_]+:[a-z0-9_]+:[a-z0-9_]+)", expr))
    if re.search(r"(?<![\w:])up\{", expr):
        plain.add("up")
    return plain, recorded


def metrics_names(out):
    import yaml

    known = known_metrics()
    used = set()
    rules = yaml.safe_load((DEPLOY / "prometheus" / "tamis.rules.yml").read_text())
    recorded_names = set()
    for g in rules["groups"]:
        for r in g["rules"]:
            if "record" in r:
                recorded_names.add(r["record"])
    for g in rules["groups"]:
        for r in g["rules"]:
            plain, recorded = referenced(r["expr"])
            bad = plain - known
            if bad:
                fail(f"tamis.rules.yml {r.get('alert') or r.get('record')}: unknown metric(s) {sorted(bad)}")
            if recorded - recorded_names:
                fail(f"tamis.rules.yml: {sorted(recorded - recorded_names)} is recorded by no rule")
            used |= plain
    ok(f"tamis.rules.yml: every metric exists in src/metrics.rs ({len(used)} used)")

    path = DEPLOY / "grafana" / "tamis.json"
    try:
        dash = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        fail(f"{path}: not JSON: {e}")
    # Provisioned from a file, a dashboard gets no __inputs substitution: the datasource and
    # the scrape job are variables, so it works as it is, imported or provisioned.
    if "__inputs" in dash:
        fail("tamis.json: __inputs (import-only): use the datasource variable")
    tvars = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    if tvars.get("datasource", {}).get("type") != "datasource" or tvars["datasource"].get("query") != "prometheus":
        fail("tamis.json: no `datasource` variable of type datasource (prometheus)")
    if "job" not in tvars:
        fail("tamis.json: no `job` variable")
    variables = set(tvars)
    builtin = {"__rate_interval", "__range", "__interval"}
    ids, boxes, exprs = set(), [], []
    for p in dash["panels"]:
        if p["id"] in ids:
            fail(f"tamis.json: duplicate panel id {p['id']}")
        ids.add(p["id"])
        g = p["gridPos"]
        for (x, y, w, h, t) in boxes:
            if g["x"] < x + w and x < g["x"] + g["w"] and g["y"] < y + h and y < g["y"] + g["h"]:
                fail(f"tamis.json: panels {t!r} and {p['title']!r} overlap")
        if g["x"] + g["w"] > 24:
            fail(f"tamis.json: panel {p['title']!r} is wider than the grid")
        boxes.append((g["x"], g["y"], g["w"], g["h"], p["title"]))
        if p["type"] == "row":
            continue
        if p.get("datasource", {}).get("uid") != "${datasource}" or any(
                t.get("datasource", {}).get("uid") != "${datasource}" for t in p.get("targets", [])):
            fail(f"tamis.json: panel {p['title']!r} does not use ${{datasource}}")
        if "job=\"tamis\"" in json.dumps(p):
            fail(f"tamis.json: panel {p['title']!r} names the job instead of using $job")
        if not p.get("targets"):
            fail(f"tamis.json: panel {p['title']!r} has no query")
        for t in p["targets"]:
            e = t["expr"]
            for v in re.findall(r"\$(\w+)", e):
                if v not in variables | builtin:
                    fail(f"tamis.json: {p['title']!r} uses undefined variable ${v}")
            plain, recorded = referenced(e)
            bad = (plain - known) | recorded
            if bad:
                fail(f"tamis.json: {p['title']!r} queries unknown metric(s) {sorted(bad)}")
            used |= plain
            exprs.append((p["title"], e))
    for v in dash["templating"]["list"]:
        if v["type"] == "datasource":
            continue
        plain, _ = referenced(v["query"]["query"] if isinstance(v["query"], dict) else v["query"])
        if plain - known:
            fail(f"tamis.json: variable {v['name']} queries unknown {sorted(plain - known)}")
    unused = sorted(n for n in known - used
                    if not n.endswith(("_sum", "_count")) and n != "tamis_config_last_reload_success_timestamp_seconds")
    ok(f"tamis.json: {len(ids)} panels, {len(exprs)} queries, every metric exists in src/metrics.rs"
       + (f" (not shown: {', '.join(unused)})" if unused else ""))

    # The dashboard's queries as recording rules, for `promtool check rules` (PromQL syntax).
    subst = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m",
             "$instance": ".*", "$route": ".*", "$job": "tamis"}
    rules_out = {"groups": [{"name": "grafana", "rules": []}]}
    for i, (title, e) in enumerate(exprs):
        for a, b in subst.items():
            e = e.replace(a, b)
        rules_out["groups"][0]["rules"].append({"record": f"grafana:panel_{i}:query", "expr": e})
    Path(out).write_text(yaml.safe_dump(rules_out, sort_keys=False))


# ---------------------------------------------------------------- dockerfile


def dockerfile():
    text = (DEPLOY / "container" / "Dockerfile").read_text()
    lines = []
    for raw in re.sub(r"\\\n", " ", text).splitlines():
        s = raw.strip()
        if s and not s.startswith("#"):
            lines.append(s)
    stages = [l for l in lines if l.upper().startswith("FROM ")]
    if len(stages) != 2:
        fail(f"Dockerfile: expected a build and a runtime stage, found {len(stages)} FROM")
    if not re.match(r"FROM rust:1-bookworm AS build$", stages[0], re.I):
        fail(f"Dockerfile: build stage is {stages[0]!r}")
    if "distroless" not in stages[1] or ":nonroot" not in stages[1]:
        fail(f"Dockerfile: runtime stage {stages[1]!r} is not distroless nonroot")
    final = lines[lines.index(stages[1]):]
    build = lines[:lines.index(stages[1])]
    if not any("cargo build --release --locked" in l for l in build):
        fail("Dockerfile: no `cargo build --release --locked`")
    users = [l.split()[1] for l in final if l.upper().startswith("USER ")]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        fail("Dockerfile: the runtime stage does not end as a non-root USER")
    copied = " ".join(l for l in final if l.upper().startswith("COPY "))
    hc = [l for l in final if l.upper().startswith("HEALTHCHECK ")]
    if len(hc) != 1:
        fail("Dockerfile: expected one HEALTHCHECK")
    m = re.search(r'CMD \["([^"]+)", "([^"]+)"\]', hc[0])
    if not m:
        fail("Dockerfile: HEALTHCHECK must be exec form (distroless has no shell)")
    if os.path.basename(m.group(1)) not in copied:
        fail(f"Dockerfile: HEALTHCHECK runs {m.group(1)}, which is not copied into the runtime stage")
    conf = (DEPLOY / "container" / "tamis.toml").read_text()
    listen = re.findall(r'^listen = "([^"]+)"', conf, re.M)
    if len(listen) != 2:
        fail("deploy/container/tamis.toml: expected a server and an admin listen")
    http_port, admin_port = (l.rsplit(":", 1)[1] for l in listen)
    if m.group(2) != f"127.0.0.1:{admin_port}":
        fail(f"Dockerfile: HEALTHCHECK probes {m.group(2)}, the admin listener is {listen[1]}")
    exposed = set(" ".join(l.split(None, 1)[1] for l in final if l.upper().startswith("EXPOSE ")).split())
    if exposed != {http_port, admin_port}:
        fail(f"Dockerfile: EXPOSE {sorted(exposed)}, the config listens on {http_port} and {admin_port}")
    if not any(l.startswith("ENTRYPOINT") and "/usr/local/bin/tamis" in l for l in final):
        fail("Dockerfile: ENTRYPOINT is not /usr/local/bin/tamis")
    if not any(l.startswith("CMD") and "/etc/tamis/tamis.toml" in l for l in final):
        fail("Dockerfile: CMD does not read /etc/tamis/tamis.toml")
    # The disk tier: the config's disk_dir is a VOLUME the runtime user owns (the root
    # filesystem may be read-only: Kubernetes mounts its own volume there).
    disk_dir = re.search(r'^disk_dir = "([^"]+)"', conf, re.M)
    if not disk_dir:
        fail("deploy/container/tamis.toml: no cache.disk_dir (the image's VOLUME)")
    volumes = [l for l in final if l.upper().startswith("VOLUME ")]
    if [v.split(None, 1)[1] for v in volumes] != [disk_dir.group(1)]:
        fail(f"Dockerfile: VOLUME {volumes}, the config's disk_dir is {disk_dir.group(1)}")
    if not any(l.startswith("COPY ") and f"--chown={users[-1]}" in l and l.endswith(" " + disk_dir.group(1))
               for l in final):
        fail(f"Dockerfile: {disk_dir.group(1)} is not copied in owned by {users[-1]} (COPY --chown)")
    # The build context: what the build stage needs must not be excluded by .dockerignore.
    ignore = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()
              if l.strip() and not l.startswith("#")]
    needed = ["Cargo.toml", "Cargo.lock", "src/main.rs", "src/lib.rs", "benches/micro.rs",
              "benches/hitrate.rs", "deploy/container/healthcheck.rs", "deploy/container/tamis.toml"]
    for f in needed:
        if not (ROOT / f).exists():
            fail(f"Dockerfile needs {f}, which does not exist")
        if any(fnmatch.fnmatch(f, p) or f.startswith(p.rstrip("/") + "/") for p in ignore):
            fail(f".dockerignore excludes {f}, which the build needs")
    for big in ["target", ".git"]:
        if big not in ignore:
            fail(f".dockerignore should exclude {big}")
    ok(f"Dockerfile: rust:1-bookworm build (--locked) -> distroless nonroot, USER {users[-1]}, "
       f"EXPOSE {' '.join(sorted(exposed))}, exec-form HEALTHCHECK on {m.group(2)}, "
       f"VOLUME {disk_dir.group(1)} (disk_dir) owned by {users[-1]}, "
       ".dockerignore keeps the sources")


# ---------------------------------------------------------------- frontends


class Recorder(BaseHTTPRequestHandler):
    seen = []

    def _any(self):
        n = int(self.headers.get("content-length") or 0)
        if n and len(self.rfile.read(n)) != n:
            return
        Recorder.seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
        body = b"tamis\n"
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("cache-control", "max-age=60")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_HEAD = _any

    def log_message(self, *a):
        pass


def exercise(name, port, tls, big_post_limited, pass_address, headers_only=False):
    """Requests through the front end at 127.0.0.1:port; the stub records what reaches tamis.
    With `pass_address`, X-Forwarded-For must be exactly the address the front end got the
    connection from (127.0.0.1), never what the client wrote (203.0.113.7, sent on every
    request); otherwise it must be absent. Every other client-address header must be absent.
    `headers_only`: just that, for every tamis path (a variant of a file already checked whole)."""

    def req(method, path, body=None, extra=None):
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            c = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=ctx)
        else:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        headers = {"Host": "site.example", "X-Forwarded-For": "203.0.113.7",
                   "X-Real-IP": "203.0.113.7", "Forwarded": "for=203.0.113.7"}
        headers.update(extra or {})
        c.request(method, path, body=body, headers=headers)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, data

    for path in PROBES:
        Recorder.seen.clear()
        status, data = req("GET", path)
        if status != 200 or data != b"tamis\n" or len(Recorder.seen) != 1:
            fail(f"{name}: GET {path} -> {status} {data[:60]!r}, tamis saw {len(Recorder.seen)} request(s)")
        method, got, headers = Recorder.seen[0]
        if got != path:
            fail(f"{name}: GET {path} reached tamis as {got}")
        leaked = [h for h in CLIENT_ADDRESS_HEADERS if h in headers]
        if pass_address:
            if headers.get("x-forwarded-for") != "127.0.0.1":
                fail(f"{name}: GET {path} reached tamis with X-Forwarded-For "
                     f"{headers.get('x-forwarded-for')!r}, expected exactly '127.0.0.1' (the "
                     "connection's address; the client sent X-Forwarded-For: 203.0.113.7)")
            leaked.remove("x-forwarded-for")
        if leaked:
            fail(f"{name}: GET {path} reached tamis with {', '.join(f'{h}: {headers[h]}' for h in leaked)}")
    if pass_address:
        ok(f"{name}: {len(PROBES)} tamis paths reach it untouched, with X-Forwarded-For = the "
           "connection's address only (the client's own X-Forwarded-For replaced, not appended "
           "to; its X-Real-IP and Forwarded dropped; nothing else added)")
    else:
        ok(f"{name}: {len(PROBES)} tamis paths reach it untouched, with no client-address header "
           "(X-Forwarded-For etc. sent by the client dropped, none added)")
    if headers_only:
        return
    for path in NOT_TAMIS:
        Recorder.seen.clear()
        req("GET", path)
        if Recorder.seen:
            fail(f"{name}: GET {path} went to tamis; it belongs to the site")
    ok(f"{name}: the site's own paths ({', '.join(NOT_TAMIS)}) stay with the site")
    Recorder.seen.clear()
    status, _ = req("POST", "/a/g/collect?v=2", body=b"en=page_view\r\n",
                    extra={"Content-Type": "text/plain"})
    if status != 200 or len(Recorder.seen) != 1 or Recorder.seen[0][0] != "POST":
        fail(f"{name}: a small analytics POST got {status}")
    Recorder.seen.clear()
    status, _ = req("POST", "/a/g/collect?v=2", body=b"x" * (100 * 1024),
                    extra={"Content-Type": "text/plain"})
    if big_post_limited:
        if status != 413 or Recorder.seen:
            fail(f"{name}: a 100 KiB analytics POST got {status} and reached tamis {len(Recorder.seen)} time(s)")
        ok(f"{name}: analytics POST forwarded; over 64 KiB refused with 413 before tamis")
    else:
        if status != 200 or len(Recorder.seen) != 1:
            fail(f"{name}: a 100 KiB analytics POST got {status}; tamis should answer it (413)")
        ok(f"{name}: analytics POSTs forwarded whole (tamis itself answers 413 over max_body)")


def nginx_opt_out(snippet):
    """The snippet with the opt-out its comments document: no client address at all."""
    out = re.sub(r"^(\s*)" + re.escape(NGINX_DEFAULT), lambda m: m.group(1) + NGINX_OPT_OUT,
                 snippet, count=1, flags=re.M)
    if out == snippet:
        fail(f"deploy/nginx/tamis.conf: no `{NGINX_DEFAULT}` line")
    return out


def nginx_check(tmp, stub_port):
    tmp = tmp / "nginx"
    tmp.mkdir()
    snippet = (DEPLOY / "nginx" / "tamis.conf").read_text()
    if "127.0.0.1:8080" not in snippet:
        fail("deploy/nginx/tamis.conf does not proxy to 127.0.0.1:8080")
    if re.search(r"^\s*[^#\n]*(proxy_add_x_forwarded_for|include\s+proxy_params)", snippet, re.M):
        fail("deploy/nginx/tamis.conf adds X-Forwarded-For")
    if not re.search(r"^\s*" + re.escape(NGINX_DEFAULT), snippet, re.M):
        fail(f"deploy/nginx/tamis.conf: expected `{NGINX_DEFAULT}` (the connection's address, by default)")
    if not re.search(r"^#.*" + re.escape(NGINX_OPT_OUT), snippet, re.M):
        fail(f"deploy/nginx/tamis.conf: the comments should document the opt-out `{NGINX_OPT_OUT}`")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "1", "-subj", "/CN=site.example",
                    "-keyout", str(tmp / "key.pem"), "-out", str(tmp / "cert.pem")],
                   check=True, capture_output=True)
    for variant, text in [("default", snippet),
                          ("opt-out", nginx_opt_out(snippet))]:
        nginx_run(tmp / variant, text.replace("127.0.0.1:8080", f"127.0.0.1:{stub_port}"),
                  tmp, variant)


NGINX = {}


def nginx_start(tmp, snippet, certs):
    """nginx on a free loopback port with `snippet` in a TLS server block; returns the port."""
    tmp.mkdir()
    (tmp / "tamis.conf").write_text(snippet)
    port = free_port()
    temp_paths = "\n".join(f"  {d}_temp_path {tmp}/{d};" for d in
                           ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"])
    (tmp / "nginx.conf").write_text(f"""
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
worker_processes 1;
events {{ worker_connections 64; }}
http {{
  access_log off;
{temp_paths}
  # What a site may already set for its other applications: must not reach tamis.
  proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
  proxy_set_header X-Real-IP $remote_addr;
  server {{
    listen 127.0.0.1:{port} ssl;
    server_name site.example;
    ssl_certificate {certs}/cert.pem;
    ssl_certificate_key {certs}/key.pem;
    proxy_set_header X-Forwarded-Proto $scheme;
    location / {{ return 200 "site\\n"; }}
    location ~* \\.(png|css|js|woff2)$ {{ return 200 "site static\\n"; }}
    include {tmp}/tamis.conf;
  }}
}}
""")
    base = ["nginx", "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "error.log")]
    r = subprocess.run(base + ["-t"], capture_output=True, text=True)
    out = (r.stdout + r.stderr).strip()
    if r.returncode != 0 or "[warn]" in out or "[emerg]" in out:
        fail(f"nginx -t on deploy/nginx/tamis.conf in a TLS server block:\n{out}")
    proc = subprocess.Popen(base + ["-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    NGINX[tmp] = proc
    wait_port(port, proc, "nginx")
    return port


def nginx_stop(tmp):
    stop(NGINX.pop(tmp))


def nginx_run(tmp, snippet, certs, variant):
    port = nginx_start(tmp, snippet, certs)
    if variant == "default":
        ok("nginx -t: deploy/nginx/tamis.conf inside an HTTPS server block: syntax ok, test successful")
    try:
        if variant == "default":
            exercise("nginx", port, tls=True, big_post_limited=True, pass_address=True)
        else:
            exercise(f"nginx (opt-out: {NGINX_OPT_OUT})", port, tls=True,
                     big_post_limited=True, pass_address=False, headers_only=True)
    finally:
        nginx_stop(tmp)


def caddy_site(text, port, backend_port, root):
    """The Caddyfile made runnable here: plain HTTP on 127.0.0.1:port, no admin endpoint, no
    certificates, tamis at backend_port, the site's files in root."""
    body = (text.replace("site.example {", f"http://site.example:{port} {{\n\tbind 127.0.0.1\n")
                .replace("127.0.0.1:8080", f"127.0.0.1:{backend_port}")
                .replace("/var/www/site.example", str(root)))
    return "{\n\tadmin off\n\tauto_https off\n}\n\n" + body


def caddy_env(tmp):
    return dict(os.environ, HOME=str(tmp), XDG_DATA_HOME=str(tmp / "data"),
                XDG_CONFIG_HOME=str(tmp / "config"))


def caddy_start(conf, port, env):
    proc = subprocess.Popen(["caddy", "run", "--adapter", "caddyfile", "--config", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        wait_port(port, proc, "caddy")
    except SystemExit:
        stop(proc)
        sys.stderr.write(proc.stderr.read().decode(errors="replace"))
        raise
    return proc


def caddy_opt_out(text):
    """The Caddyfile with the opt-out its comments document: no client address at all."""
    if CADDY_DEFAULT not in text:
        fail(f"deploy/caddy/Caddyfile: no `{CADDY_DEFAULT.strip()}` line")
    return text.replace(CADDY_DEFAULT, CADDY_OPT_OUT)


def caddy_check(tmp, stub_port):
    tmp = tmp / "caddy"
    tmp.mkdir()
    env = caddy_env(tmp)
    src = DEPLOY / "caddy" / "Caddyfile"
    r = subprocess.run(["caddy", "validate", "--adapter", "caddyfile", "--config", str(src)],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0 or "Valid configuration" not in r.stdout + r.stderr:
        fail(f"caddy validate deploy/caddy/Caddyfile:\n{r.stdout}{r.stderr}")
    warnings = [l for l in r.stderr.splitlines() if '"level":"warn"' in l]
    known = [l for l in warnings if CADDY_KNOWN_WARNING in l]
    if len(known) < len(warnings):
        fail("caddy validate warned:\n" + "\n".join(l for l in warnings if l not in known))
    ok("caddy validate --adapter caddyfile deploy/caddy/Caddyfile: Valid configuration"
       + (f" (and the expected \"{CADDY_KNOWN_WARNING}\": see the comments)" if known else ""))
    r = subprocess.run(["caddy", "fmt", str(src)], capture_output=True, text=True, env=env)
    if r.returncode != 0 or r.stdout != src.read_text():
        fail("deploy/caddy/Caddyfile is not as `caddy fmt` formats it")
    ok("caddy fmt: deploy/caddy/Caddyfile formatted")
    text = src.read_text()
    if "site.example {" not in text or "127.0.0.1:8080" not in text:
        fail("deploy/caddy/Caddyfile: expected a `site.example {` block proxying to 127.0.0.1:8080")
    if CADDY_DEFAULT not in text:
        fail(f"deploy/caddy/Caddyfile: expected `{CADDY_DEFAULT.strip()}` (the connection's "
             "address, by default)")
    if not re.search(r"^#\s*" + re.escape(CADDY_OPT_OUT.strip()) + r"\s*$", text, re.M):
        fail(f"deploy/caddy/Caddyfile: the comments should document the opt-out `{CADDY_OPT_OUT.strip()}`")
    proxy = "reverse_proxy 127.0.0.1:8080 {\n"
    if text.count(proxy) != 1:
        fail(f"deploy/caddy/Caddyfile: expected one `{proxy.strip()}` (the (tamis) snippet)")
    # Caddy trusting its client (as a site behind a CDN would) makes Caddy's own X-Forwarded-For
    # append to the client's value: the file's line must still replace it.
    caddy_trusting = text.replace(proxy, proxy + "\t\ttrusted_proxies 127.0.0.0/8\n")
    for variant, body in [("default", text), ("default, Caddy trusting its client", caddy_trusting),
                          ("opt-out", caddy_opt_out(text))]:
        port = free_port()
        conf = tmp / f"Caddyfile-{re.sub(r'[^a-z]+', '-', variant)}"
        conf.write_text(caddy_site(body, port, stub_port, tmp))
        proc = caddy_start(conf, port, env)
        try:
            if variant == "default":
                exercise("caddy", port, tls=False, big_post_limited=False, pass_address=True)
            elif variant == "opt-out":
                exercise(f"caddy (opt-out: {CADDY_OPT_OUT.strip()})", port, tls=False,
                         big_post_limited=False, pass_address=False, headers_only=True)
            else:
                exercise(f"caddy ({variant}: trusted_proxies 127.0.0.0/8 in reverse_proxy)", port,
                         tls=False, big_post_limited=False, pass_address=True, headers_only=True)
        finally:
            stop(proc)


def shipped_trusted_proxies():
    """server.trusted_proxies of config/tamis.toml, which must trust the local terminator."""
    try:
        import tomllib

        server = tomllib.loads((ROOT / "config" / "tamis.toml").read_text()).get("server", {})
        trusted = server.get("trusted_proxies", [])
    except ImportError:  # Python < 3.11: the one line is a JSON array too
        m = re.search(r"^trusted_proxies\s*=\s*(\[.*\])", (ROOT / "config" / "tamis.toml").read_text(), re.M)
        trusted = json.loads(m.group(1)) if m else []
    if "127.0.0.1" not in trusted:
        fail(f"config/tamis.toml: server.trusted_proxies is {trusted}; it must trust the local "
             "terminator (127.0.0.1), which passes the visitor's address by default")
    return trusted


def pairing(tamis):
    """The front ends as shipped in front of a real tamis with a per-client rate limit: with
    the shipped trusted_proxies two visitors get separate buckets; with the front end's opt-out,
    or without trusted_proxies, they share the terminator's; either way neither the upstream
    nor tamis's log sees a visitor's address."""
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    nginx_default = (DEPLOY / "nginx" / "tamis.conf").read_text()
    caddy_default = (DEPLOY / "caddy" / "Caddyfile").read_text()
    trusted = shipped_trusted_proxies()
    visitor_a, visitor_b, forged = "127.0.0.2", "127.0.0.3", "203.0.113.7"
    # (front end, its file, tamis's trusted_proxies, separate buckets expected, what it is)
    cases = [
        ("nginx", nginx_default, trusted, True,
         f"nginx as shipped + tamis as shipped (trusted_proxies = {json.dumps(trusted)})"),
        ("caddy", caddy_default, trusted, True,
         f"Caddy as shipped + tamis as shipped (trusted_proxies = {json.dumps(trusted)})"),
        ("nginx", nginx_opt_out(nginx_default), trusted, False,
         f"nginx with the opt-out ({NGINX_OPT_OUT}) + tamis as shipped"),
        ("nginx", nginx_default, [], False, "nginx as shipped + tamis without trusted_proxies"),
    ]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            os.chmod(tmp, 0o755)
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                            "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=site.example",
                            "-keyout", str(tmp / "key.pem"), "-out", str(tmp / "cert.pem")],
                           check=True, capture_output=True)
            for i, (front, text, trust, separate, what) in enumerate(cases):
                http_port, admin_port = free_port(), free_port()
                conf = tmp / f"tamis-{i}.toml"
                conf.write_text(
                    f'[server]\nlisten = "127.0.0.1:{http_port}"\n'
                    + (f"trusted_proxies = {json.dumps(trust)}\n" if trust else "")
                    + f'\n[admin]\nlisten = "127.0.0.1:{admin_port}"\n\n'
                    '[log]\naccess = true\n\n'
                    f'[[route]]\nname = "tiles"\nkind = "static"\nprefix = "/tiles/"\n'
                    f'upstream = "http://127.0.0.1:{upstream.server_address[1]}/"\n'
                    'cache = false\nrate_limit = "2/min"\nrate_burst = 2\n')
                log = open(tmp / f"tamis-{i}.log", "w+")
                proc = subprocess.Popen([str(tamis), "--config", str(conf), "run"],
                                        stdout=log, stderr=subprocess.STDOUT)
                try:
                    wait_port(http_port, proc, "tamis")
                    Recorder.seen.clear()
                    if front == "nginx":
                        front_dir = tmp / f"nginx-{i}"
                        port = nginx_start(front_dir, text.replace("127.0.0.1:8080", f"127.0.0.1:{http_port}"), tmp)
                        tls = True
                    else:
                        port = free_port()
                        caddy_dir = tmp / f"caddy-{i}"
                        caddy_dir.mkdir()
                        caddy_conf = caddy_dir / "Caddyfile"
                        caddy_conf.write_text(caddy_site(text, port, http_port, caddy_dir))
                        caddy_proc = caddy_start(caddy_conf, port, caddy_env(caddy_dir))
                        tls = False
                    try:
                        def get(source):
                            if tls:
                                ctx = ssl.create_default_context()
                                ctx.check_hostname = False
                                ctx.verify_mode = ssl.CERT_NONE
                                c = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=ctx,
                                                                source_address=(source, 0))
                            else:
                                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5,
                                                               source_address=(source, 0))
                            c.request("GET", "/tiles/osm/1/2/3.png",
                                      headers={"Host": "site.example", "X-Forwarded-For": forged})
                            r = c.getresponse()
                            r.read()
                            c.close()
                            return r.status

                        a = [get(visitor_a) for _ in range(3)]
                        b = get(visitor_b)
                    finally:
                        if front == "nginx":
                            nginx_stop(front_dir)
                        else:
                            stop(caddy_proc)
                    if a != [200, 200, 429]:
                        fail(f"{what}: rate limit 2/min burst 2: visitor A got {a}")
                    want_b = 200 if separate else 429
                    if b != want_b:
                        fail(f"{what}: visitor B got {b}, expected {want_b} "
                             f"({'its own bucket' if separate else 'the bucket it shares with A'})")
                    if len(Recorder.seen) != (3 if separate else 2):
                        fail(f"{what}: the upstream got {len(Recorder.seen)} requests, expected "
                             f"{3 if separate else 2} (the 200s)")
                    for _, _, headers in Recorder.seen:
                        leaked = [h for h in CLIENT_ADDRESS_HEADERS if h in headers]
                        if leaked:
                            fail(f"{what}: the upstream behind tamis received {leaked}")
                        for addr in (visitor_a, visitor_b, forged):
                            if any(addr in v for v in headers.values()):
                                fail(f"{what}: the upstream behind tamis received {addr}: {headers}")
                finally:
                    stop(proc)
                log.seek(0)
                logged = log.read()
                if "/tiles/osm/1/2/3.png" not in logged:
                    fail(f"{what}: tamis's access log has no line for the requests:\n{logged}")
                for addr in (visitor_a, visitor_b, forged):
                    if addr in logged:
                        fail(f"{what}: tamis's log (log.client_ip unset) holds {addr}:\n{logged}")
                ok(f"{what}: " + ("two visitors, two rate-limit buckets" if separate else
                                  "two visitors share one rate-limit bucket (429 for the second), "
                                  "as the comments warn")
                   + "; no address reached the upstream or tamis's log")
    finally:
        upstream.shutdown()


def frontends():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stub_port = server.server_address[1]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            os.chmod(tmp, 0o755)
            nginx_check(tmp, stub_port)
            caddy_check(tmp, stub_port)
    finally:
        server.shutdown()


def main():
    if len(sys.argv) < 2:
        fail(__doc__)
    step, args = sys.argv[1], sys.argv[2:]
    steps = {
        "systemd-smoke": lambda: systemd_smoke(Path(args[0]).resolve()),
        "configs": lambda: configs(Path(args[0]).resolve()),
        "kubernetes": kubernetes,
        "metrics-names": lambda: metrics_names(args[0]),
        "dockerfile": dockerfile,
        "frontends": frontends,
        "pairing": lambda: pairing(Path(args[0]).resolve()),
    }
    if step not in steps:
        fail(f"unknown step {step}\n{__doc__}")
    steps[step]()


if __name__ == "__main__":
    main()
