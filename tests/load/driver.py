#!/usr/bin/env python3
"""The load test's driver (run by scripts/load): starts the servers, runs Locust against them,
watches each server process's memory and file descriptors, prints the report and exits
non-zero when anything failed.

Setups (each on throw-away directories and free loopback ports, stopped at the end):
  single    one server on SQLite and the local store
  replicas  two servers on one PostgreSQL database and one Garage (S3) prefix, behind a real
            nginx (round robin, request buffering off, no body size limit); needs
            FS_TEST_PG_URL, FS_TEST_S3_ENDPOINT, FS_TEST_S3_REGION and the AWS keys
            (scripts/lib.sh's start_postgres and start_garage export them)

Standard library only; Locust runs from its own virtualenv (--locust).
"""

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 1 << 20
API = "/image-management/v1"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_http(url, proc, what, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}) before answering {url}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer {url} within {timeout} s")
        time.sleep(0.1)


# ---- processes -----------------------------------------------------------------------------

PROCS = []  # (name, Popen) of everything started, stopped in reverse order


def spawn(name, argv, env=None, cwd=None, logfile=None):
    out = open(logfile, "ab") if logfile else subprocess.DEVNULL
    p = subprocess.Popen(
        argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    PROCS.append((name, p))
    return p


def stop(name, p, sig=signal.SIGTERM, grace=15):
    """Stops one process we started (by its pid); its exit code (None if it had to be killed)."""
    if p.poll() is None:
        try:
            p.send_signal(sig)
            p.wait(grace)
        except subprocess.TimeoutExpired:
            log(f"{name} (pid {p.pid}) did not stop within {grace} s: killed")
            p.kill()
            p.wait()
            return None
    if (name, p) in PROCS:
        PROCS.remove((name, p))
    return p.returncode


def stop_all():
    for name, p in reversed(list(PROCS)):
        stop(name, p, grace=5)


# ---- watching a process: memory and file descriptors ----------------------------------------


def tcp_table():
    """inode -> (local port, remote port, state) of every TCP socket in this network namespace."""
    table = {}
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    p = line.split()
                    table[p[9]] = (int(p[1].rsplit(":", 1)[1], 16), int(p[2].rsplit(":", 1)[1], 16), p[3])
        except OSError:
            pass
    return table


CATEGORIES = ("files", "pipes", "anon", "http", "db", "s3", "other")


class Watched:
    """One server process and what its descriptors are: files, pipes, anon inodes (epoll,
    eventfd, timerfd), http (connections accepted on its port), db (PostgreSQL connections, or
    the SQLite files), s3 (connections to the S3 endpoint), other (its listener, ...)."""

    def __init__(self, name, proc, port, db_port=None, s3_port=None, db_file=None):
        self.name, self.proc, self.port = name, proc, port
        self.db_port, self.s3_port, self.db_file = db_port, s3_port, db_file
        self.samples = 0
        self.peak = None  # the sample with the most descriptors
        self.peak_rss = 0

    def status(self):
        out = {}
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    out[k] = int(v.split()[0]) * 1024
        return out

    def fds(self, table=None):
        table = tcp_table() if table is None else table
        counts = dict.fromkeys(CATEGORIES, 0)
        d = f"/proc/{self.proc.pid}/fd"
        for fd in os.listdir(d):
            try:
                target = os.readlink(f"{d}/{fd}")
            except OSError:
                continue  # closed meanwhile
            if target.startswith("socket:["):
                t = table.get(target[8:-1])
                if t is None:
                    cat = "other"
                elif t[2] != "0A" and t[0] == self.port:
                    cat = "http"
                elif self.db_port and t[1] == self.db_port:
                    cat = "db"
                elif self.s3_port and t[1] == self.s3_port:
                    cat = "s3"
                else:
                    cat = "other"
            elif target.startswith("pipe:"):
                cat = "pipes"
            elif target.startswith("anon_inode:"):
                cat = "anon"
            elif self.db_file and target.startswith(self.db_file):
                cat = "db"
            else:
                cat = "files"
            counts[cat] += 1
        counts["total"] = sum(counts[c] for c in CATEGORIES)
        return counts

    def snapshot(self, table=None):
        s = self.status()
        s["fds"] = self.fds(table)
        return s

    def sample(self, table):
        try:
            s = self.snapshot(table)
        except (OSError, ValueError):
            return
        self.samples += 1
        self.peak_rss = max(self.peak_rss, s.get("VmHWM", 0))
        if self.peak is None or s["fds"]["total"] > self.peak["fds"]["total"]:
            self.peak = s


class Sampler(threading.Thread):
    def __init__(self, watched, every=0.5):
        super().__init__(daemon=True)
        self.watched, self.every = watched, every
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            table = tcp_table()
            for w in self.watched:
                w.sample(table)
            self.done.wait(self.every)


def checked(fds):
    """The descriptors that must come back to the idle level: all but pooled connections
    (database, S3) and accepted HTTP connections, which have bounds of their own."""
    return fds["files"] + fds["pipes"] + fds["anon"] + fds["other"]


# ---- setups --------------------------------------------------------------------------------


def server_env(extra):
    """The environment of a server: ours, without any FS_* or DATABASE_URL of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FS_") and k != "DATABASE_URL"}
    env.update({"RUST_LOG": "warn", "FS_LOG_FORMAT": "text"})
    env.update(extra)
    return env


def start_server(name, binary, root, port, extra, watched_kw):
    os.makedirs(root, exist_ok=True)
    env = server_env({"FS_LISTEN": f"127.0.0.1:{port}", "FS_SCRATCH_DIR": f"{root}/scratch", **extra})
    # cwd: a directory without a .env file (the server reads one from its working directory).
    p = spawn(name, [binary, "serve"], env=env, cwd=root, logfile=f"{root}/server.log")
    wait_http(f"http://127.0.0.1:{port}/ready", p, name)
    w = Watched(name, p, port, **watched_kw)
    w.logfile = f"{root}/server.log"
    return w


def nginx_conf(d, port, upstreams):
    servers = "".join(f"        server {u} max_fails=1 fail_timeout=10s;\n" for u in upstreams)
    user = "user root;" if os.geteuid() == 0 else ""
    # As tests/api/proxy.rs runs it, with more connections for the load.
    return f"""{user}
worker_processes 1;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream file_system {{
{servers}        keepalive 8;
    }}
    # Longer than any run: locust's pool keeps idle connections without expiring them and
    # never retries a POST, so one nginx closes after its default 75 s idle time can take a
    # request sent at the same moment (status 0, an empty answer: a race of HTTP keep-alive,
    # not of the service; clients such as Java's retry on a stale connection).
    keepalive_timeout 3600s;
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        location / {{
            proxy_pass http://file_system;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering off;
        }}
    }}
}}
"""


NGINX_KEEPALIVE = 8


def start_nginx(root, upstreams):
    d = f"{root}/nginx"
    os.makedirs(d, exist_ok=True)
    port = free_port()
    with open(f"{d}/nginx.conf", "w") as f:
        f.write(nginx_conf(d, port, upstreams))
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    p = spawn(
        "nginx",
        [binary, "-p", d, "-e", f"{d}/error.log", "-c", f"{d}/nginx.conf", "-g", "daemon off;"],
        logfile=f"{d}/stderr.log",
    )
    wait_http(f"http://127.0.0.1:{port}/health", p, "nginx")
    return p, port, f"{d}/error.log"


def port_of(url):
    return int(url.rstrip("/").rsplit(":", 1)[1].split("/")[0])


def setup_single(args, root):
    port = free_port()
    db = f"{root}/s1/meta.db"
    w = start_server(
        "server (SQLite + local)",
        args.bin,
        f"{root}/s1",
        port,
        {"DATABASE_URL": f"sqlite://{db}?mode=rwc", "FS_STORAGE": "local", "FS_LOCAL_DIR": f"{root}/s1/objects"},
        {"db_file": db},
    )
    return f"http://127.0.0.1:{port}", [w], None, "one server on SQLite + the local store"


def setup_replicas(args, root):
    for v in ("FS_TEST_PG_URL", "FS_TEST_S3_ENDPOINT", "FS_TEST_S3_REGION", "AWS_ACCESS_KEY_ID"):
        if not os.environ.get(v):
            raise RuntimeError(f"{v} is not set: the replicas need PostgreSQL and Garage (scripts/load starts them)")
    pg = os.environ["FS_TEST_PG_URL"]
    name = f"load_{uuid.uuid4().hex[:12]}"
    subprocess.run([args.psql, f"{pg}/postgres", "-q", "-c", f"CREATE DATABASE {name}"], check=True)
    s3 = os.environ["FS_TEST_S3_ENDPOINT"]
    common = {
        "DATABASE_URL": f"{pg}/{name}",
        "FS_STORAGE": "s3",
        "FS_S3_ENDPOINT": s3,
        "FS_S3_REGION": os.environ["FS_TEST_S3_REGION"],
        "FS_S3_KEY_PREFIX": f"{name}/",
    }
    kw = {"db_port": port_of(pg), "s3_port": port_of(s3)}
    watched = []
    for i in (1, 2):
        # One after the other: the first applies the migrations.
        port = free_port()
        watched.append(
            start_server(f"replica {i} (PostgreSQL + Garage)", args.bin, f"{root}/r{i}", port, common, kw)
        )
    nginx, nport, errlog = start_nginx(root, [f"127.0.0.1:{w.port}" for w in watched])
    return (
        f"http://127.0.0.1:{nport}",
        watched,
        errlog,
        "two replicas on PostgreSQL + Garage behind nginx (round robin, request buffering off)",
    )


# ---- one run -------------------------------------------------------------------------------


def make_qcow2(root):
    path = f"{root}/slim-me.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, "64M"], check=True)
    subprocess.run(
        ["qemu-io", "-c", "write -P 0x5a 0 4M", "-c", "write -P 0xa5 16M 2M", path],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return path


def read_stats(prefix):
    rows = []
    with open(f"{prefix}_stats.csv") as f:
        for row in csv.DictReader(f):
            rows.append(row)
    failures = []
    try:
        with open(f"{prefix}_failures.csv") as f:
            failures = list(csv.DictReader(f))
    except OSError:
        pass
    exceptions = []
    try:
        with open(f"{prefix}_exceptions.csv") as f:
            exceptions = list(csv.DictReader(f))
    except OSError:
        pass
    return rows, failures, exceptions


def run_setup(args, setup, root, qcow2):
    problems = []
    os.makedirs(root, exist_ok=True)
    started = time.monotonic()
    base, watched, nginx_errlog, what = (setup_single if setup == "single" else setup_replicas)(args, root)
    startup = time.monotonic() - started

    # Idle: servers up, nothing asked of them yet.
    time.sleep(1)
    table = tcp_table()
    idle = {w.name: w.snapshot(table) for w in watched}

    sampler = Sampler(watched)
    sampler.start()
    prefix = f"{root}/locust"
    env = dict(os.environ)
    env.update(
        {
            "LOAD_QCOW2": qcow2,
            "LOAD_RESULT": f"{root}/counters.json",
            "LOAD_TMP": root,
            "LOAD_MAX_MIB": str(args.size_mib),
            "LOAD_MAX_REQUESTS": str(args.max_requests),
        }
    )
    argv = [
        args.locust,
        "-f", f"{HERE}/locustfile.py",
        "--headless",
        "-u", str(args.clients),
        "-r", str(args.clients),
        "--run-time", f"{args.duration}s",
        "--stop-timeout", str(args.stop_timeout),
        "--host", base,
        "--csv", prefix,
        "--only-summary",
        "--loglevel", "WARNING",
    ]
    log(f"[{setup}] {what}: {args.clients} clients for {args.duration} s on {base} (servers up in {startup:.1f} s)")
    load_started = time.monotonic()
    locust = spawn("locust", argv, env=env, cwd=root, logfile=f"{root}/locust.log")
    try:
        rc = locust.wait(args.duration + args.stop_timeout + 120)
    except subprocess.TimeoutExpired:
        problems.append("Locust did not end in time: killed")
        stop("locust", locust, sig=signal.SIGKILL)
        rc = -9
    PROCS[:] = [(n, p) for n, p in PROCS if p is not locust]
    elapsed = time.monotonic() - load_started
    sampler.done.set()
    sampler.join()

    # After: the descriptors that must come back to the idle level, waited for up to ~10 s.
    deadline = time.monotonic() + args.settle
    while True:
        table = tcp_table()
        after = {w.name: w.snapshot(table) for w in watched}
        back = all(
            checked(after[w.name]["fds"]) <= checked(idle[w.name]["fds"]) + args.fd_slack for w in watched
        )
        if back or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    settled = time.monotonic() - load_started - elapsed

    rows, failures, exceptions = read_stats(prefix) if os.path.exists(f"{prefix}_stats.csv") else ([], [], [])
    try:
        with open(f"{root}/counters.json") as f:
            counters = json.load(f)
    except (OSError, ValueError):
        counters = {}
        problems.append("Locust wrote no counters (it did not end normally)")
    with open(f"{root}/locust.log", errors="replace") as f:
        locust_log = f.read()
    if rc != 0:
        problems.append(f"Locust exited {rc}")
    for fl in failures:
        problems.append(f"{fl['Occurrences']}x {fl['Method']} {fl['Name']}: {fl['Error'][:400]}")
    for ex in exceptions:
        problems.append(f"{ex['Count']}x exception in the scenario: {ex['Message'][:300]}")
    if counters.get("mismatches"):
        problems.append(f"{counters['mismatches']} byte/record mismatches")
    if "Traceback" in locust_log and not exceptions:
        problems.append("Locust logged a traceback (see below)")

    # Each process: peak RSS, descriptors back to idle, bounded pools, nothing logged as a crash.
    limit = args.max_rss_mib * MIB
    for w in watched:
        peak_rss = max(w.peak_rss, after[w.name].get("VmHWM", 0))
        w.peak_rss = peak_rss
        if peak_rss > limit:
            problems.append(f"{w.name}: peak RSS {peak_rss / MIB:.1f} MiB > {args.max_rss_mib} MiB")
        i, a = idle[w.name]["fds"], after[w.name]["fds"]
        if checked(a) > checked(i) + args.fd_slack:
            problems.append(
                f"{w.name}: {checked(a)} descriptors (files, pipes, anon inodes, other) {settled:.0f} s after "
                f"the load, {checked(i)} at idle (slack {args.fd_slack}): {a}"
            )
        http_allowed = i["http"] + (NGINX_KEEPALIVE if nginx_errlog else 0)
        if a["http"] > http_allowed:
            problems.append(f"{w.name}: {a['http']} HTTP connections still open after the load (at most {http_allowed})")
        db_allowed = 20 if w.db_port else 8 * 3  # the pool's size (PostgreSQL 20; SQLite 8, 3 files each)
        if a["db"] > db_allowed:
            problems.append(f"{w.name}: {a['db']} database descriptors after the load (pool: at most {db_allowed})")

    # Stop everything and look at the logs.
    codes = {}
    if nginx_errlog:
        for n, p in list(PROCS):
            if n == "nginx":
                stop(n, p)
    for w in watched:
        codes[w.name] = stop(w.name, w.proc)
        if codes[w.name] != 0:
            problems.append(f"{w.name}: exited {codes[w.name]} on SIGTERM")
    for w in watched:
        path = w.logfile
        with open(path, errors="replace") as f:
            text = f.read()
        if "panicked" in text:
            problems.append(f"{w.name}: panicked (see {path})")
        errors = [l for l in text.splitlines() if " ERROR " in l]
        if errors:
            problems.append(f"{w.name}: {len(errors)} ERROR lines in its log, first: {errors[0][:300]}")
    if nginx_errlog:
        with open(nginx_errlog, errors="replace") as f:
            bad = [l for l in f if any(x in l for x in ("[error]", "[crit]", "[alert]", "[emerg]"))]
        if bad:
            problems.append(f"nginx: {len(bad)} error lines, first: {bad[0].strip()[:300]}")

    return {
        "setup": setup,
        "what": what,
        "base": base,
        "clients": args.clients,
        "duration": args.duration,
        "elapsed": elapsed,
        "startup": startup,
        "settled": settled,
        "rows": rows,
        "counters": counters,
        "procs": [
            {
                "name": w.name,
                "pid": w.proc.pid,
                "idle": idle[w.name],
                "peak": w.peak,
                "peak_rss": w.peak_rss,
                "after": after[w.name],
                "samples": w.samples,
                "exit": codes.get(w.name),
            }
            for w in watched
        ],
        "problems": problems,
        "locust_log_tail": locust_log[-3000:],
        "root": root,
    }


# ---- report --------------------------------------------------------------------------------


def fmt_ms(v):
    try:
        return f"{float(v):.0f}"
    except (TypeError, ValueError):
        return "-"


def report(r):
    out = []
    c = r["counters"]
    agg = next((x for x in r["rows"] if x["Name"] == "Aggregated"), None)
    total = int(agg["Request Count"]) if agg else 0
    fails = int(agg["Failure Count"]) if agg else 0
    rps = total / r["elapsed"] if r["elapsed"] else 0
    out.append(f"== {r['setup']}: {r['what']}")
    out.append(
        f"   {r['clients']} clients, {r['duration']} s asked, {r['elapsed']:.1f} s run (servers up in {r['startup']:.1f} s); "
        f"{total} requests, {rps:.1f} req/s, {fails} failed, {c.get('mismatches', '?')} mismatches, "
        f"{c.get('bytes_verified', 0) / MIB:.0f} MiB verified"
    )
    out.append(
        "   done: {} single uploads, {} chunked (in order {}, out of order {}, parallel {}; {} chunks, {} replaced), "
        "{} downloads, {} zips, {} ranges, {} slims, {} checks, {} deletes, {} lists".format(
            c.get("uploads_single", 0),
            c.get("uploads_chunked_in_order", 0) + c.get("uploads_chunked_out_of_order", 0) + c.get("uploads_chunked_parallel", 0),
            c.get("uploads_chunked_in_order", 0),
            c.get("uploads_chunked_out_of_order", 0),
            c.get("uploads_chunked_parallel", 0),
            c.get("chunks", 0),
            c.get("chunks_replaced", 0),
            c.get("downloads", 0),
            c.get("zips", 0),
            c.get("ranges", 0),
            c.get("slims", 0),
            c.get("checks", 0),
            c.get("deletes", 0),
            c.get("lists", 0),
        )
    )
    def label(x):
        # Request names start with their method already ("GET /images/{id}").
        if x["Name"] == "Aggregated":
            return "all"
        if x["Name"].startswith(x["Type"] + " "):
            return x["Name"]
        return f"{x['Type']} {x['Name']}"

    w = max([len(label(x)) for x in r["rows"]] + [20])
    out.append(f"   {'route':<{w}} {'requests':>8} {'fails':>5} {'req/s':>6} {'p50':>6} {'p95':>6} {'p99':>6} {'max':>6}  (ms)")
    for x in r["rows"]:
        name = label(x)
        out.append(
            f"   {name:<{w}} {x['Request Count']:>8} {x['Failure Count']:>5} "
            f"{int(x['Request Count']) / r['elapsed'] if r['elapsed'] else 0:>6.1f} "
            f"{fmt_ms(x['50%']):>6} {fmt_ms(x['95%']):>6} {fmt_ms(x['99%']):>6} {fmt_ms(x['Max Response Time']):>6}"
        )
    out.append(
        f"   {'process':<34} {'RSS idle':>9} {'peak RSS':>9} {'RSS after':>9}   fds idle / peak / after"
        f"  (after: files+pipes+anon+other, http, db, s3)"
    )
    for p in r["procs"]:
        i, pk, a = p["idle"], p["peak"] or p["idle"], p["after"]
        fa = a["fds"]
        out.append(
            f"   {p['name']:<34} {i['VmRSS'] / MIB:>8.1f}M {p['peak_rss'] / MIB:>8.1f}M {a['VmRSS'] / MIB:>8.1f}M"
            f"   {i['fds']['total']} / {pk['fds']['total']} / {fa['total']}"
            f"  ({checked(fa)} vs {checked(i['fds'])} idle, {fa['http']}, {fa['db']}, {fa['s3']})"
        )
    if r["problems"]:
        out.append(f"   FAILED ({len(r['problems'])}):")
        out.extend(f"   - {p}" for p in r["problems"][:30])
    else:
        out.append("   OK: no error, no mismatch, peak RSS under the limit, descriptors back to idle")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--locust", required=True)
    ap.add_argument("--psql", default="psql")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=int, default=60)
    ap.add_argument("--max-requests", type=int, default=0)
    ap.add_argument("--size-mib", type=int, default=16)
    ap.add_argument("--setup", choices=("single", "replicas", "both"), default="both")
    ap.add_argument("--stop-timeout", type=int, default=30)
    ap.add_argument("--settle", type=float, default=10)
    ap.add_argument("--fd-slack", type=int, default=int(os.environ.get("LOAD_FD_SLACK", "8")))
    ap.add_argument("--max-rss-mib", type=int, default=int(os.environ.get("LOAD_MAX_RSS_MIB", "256")))
    ap.add_argument("--keep", action="store_true", help="keep the run's directory (logs, CSVs)")
    ap.add_argument("--report-json")
    args = ap.parse_args()
    if args.size_mib < 1:
        ap.error("--size-mib must be at least 1")

    def on_term(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    top = tempfile.mkdtemp(prefix="fs-load.")
    results = []
    ok = False
    try:
        qcow2 = make_qcow2(top)
        setups = ["single", "replicas"] if args.setup == "both" else [args.setup]
        for s in setups:
            try:
                r = run_setup(args, s, f"{top}/{s}", qcow2)
            finally:
                stop_all()
            results.append(r)
            print(report(r), flush=True)
            if r["problems"]:
                print(f"   (Locust's log, last lines:)\n{r['locust_log_tail']}", flush=True)
        ok = all(not r["problems"] for r in results)
    finally:
        stop_all()
        if args.report_json:
            with open(args.report_json, "w") as f:
                json.dump(results, f, indent=1, default=str)
        if args.keep or not ok:
            log(f"logs and Locust's CSVs kept in {top}")
        else:
            shutil.rmtree(top, ignore_errors=True)
    print("load test: " + ("passed" if ok else "FAILED"), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
