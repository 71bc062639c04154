#!/usr/bin/env python3
"""docker/check_compose.py — checks docker/compose.yaml without a container engine.

Usage:
  check_compose.py --kit DIR --data DIR --run DIR [--schema compose-spec.json]
                   docker/compose.yaml [docker/compose.gpu.yaml ...]

What it does, in order:
  1. parses each file with PyYAML (anchors and `<<` merge keys resolved) and
     merges the files like `docker compose -f A -f B` does for mappings;
  2. checks that FEDSEG_KIT, FEDSEG_DATA and FEDSEG_RUN are required (an
     unset one must stop interpolation with its `${VAR:?message}`), then
     interpolates ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?msg},
     ${VAR?msg} and $$ with FEDSEG_KIT/DATA/RUN set to the given folders;
  3. with --schema, validates the result against the Compose Specification's
     JSON schema (schema/compose-spec.json of the compose-spec project;
     needs the jsonschema module);
  4. checks the federation against a real provisioned folder: every bind
     source exists; /kit mounts are read-only and hold the config file the
     command names plus the ca/cert/key files that config points at; the CA
     folder is mounted nowhere; /data mounts are read-only; /state mounts are
     writable folders; each site's kit names that site, which the aggregator's
     site list admits; the sites dial a name the aggregator answers to on the
     network (service name or alias), on the port it listens on and publishes,
     and that name is in the aggregator certificate (openssl, when present);
     every service has a restart policy that restarts on failure; GPU
     reservations, if any, are on sites only.

Prints one line per failed check and a summary; exit 0 when all pass, 1 when
one fails, 2 on bad usage. Tested by tests/test_compose.sh (ctest test_compose).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys

try:
    import yaml
except ImportError:  # the test skips when PyYAML is missing
    sys.stderr.write("check_compose: PyYAML is needed (Debian: python3-yaml)\n")
    sys.exit(77)

REQUIRED = ("FEDSEG_KIT", "FEDSEG_DATA", "FEDSEG_RUN")
VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


class Unset(Exception):
    """A required variable (${VAR:?msg}) is unset."""


def interpolate(value, env):
    """Compose-style interpolation of every string in value (recursively)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m):
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        val = env.get(name)
        empty = val is None or (op is not None and op.startswith(":") and val == "")
        if op and op.endswith("-"):
            return arg if empty else val
        if op and op.endswith("?"):
            if empty:
                raise Unset(f"{name}: {arg}")
            return val
        return val or ""

    return VAR.sub(one, value)


def merge(base, over):
    """Merges mapping `over` into `base` (later files win, mappings merge)."""
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v)
        else:
            base[k] = v
    return base


def read_conf(path):
    """A fedseg `key = value` config file as a dict."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                out[k.strip()] = v.strip()
    return out


def cert_names(path):
    """DNS and IP names in a certificate's subjectAltName (None: no openssl)."""
    if not shutil.which("openssl"):
        return None
    r = subprocess.run(["openssl", "x509", "-in", path, "-noout", "-ext", "subjectAltName"],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        return set()
    return set(re.findall(r"(?:DNS|IP Address):([^,\s]+)", r.stdout))


class Checker:
    def __init__(self):
        self.failed = []
        self.passed = 0

    def check(self, ok, what):
        if ok:
            self.passed += 1
        else:
            self.failed.append(what)
        return ok


def mounts(svc):
    """{target: (source, read_only)} of a service's short-syntax volumes."""
    out = {}
    for v in svc.get("volumes", []):
        parts = v.split(":")
        out[parts[1]] = (parts[0], len(parts) > 2 and "ro" in parts[2].split(","))
    return out


def check_kit(c, name, svc, config_name):
    """The /kit mount of one service; returns the parsed config (or None)."""
    m = mounts(svc)
    if not c.check("/kit" in m, f"{name}: no /kit mount"):
        return None
    src, ro = m["/kit"]
    c.check(ro, f"{name}: /kit ({src}) is not mounted read-only")
    cmd = svc.get("command", [])
    c.check("--config" in cmd and cmd[cmd.index("--config") + 1] == "/kit/" + config_name,
            f"{name}: the command does not read /kit/{config_name}")
    conf_path = os.path.join(src, config_name)
    if not c.check(os.path.isfile(conf_path), f"{name}: {conf_path} does not exist"):
        return None
    conf = read_conf(conf_path)
    for key in ("ca", "cert", "key"):
        p = conf.get(key, "")
        c.check(p and not os.path.isabs(p) and os.path.isfile(os.path.join(src, p)),
                f"{name}: {key} = {p!r} in {conf_path} is not a file inside the kit")
    return conf


def run_checks(doc, kit, c):
    services = doc.get("services", {})
    agg = services.get("aggregator")
    if not c.check(agg is not None, "no service named aggregator"):
        return
    sites = {n: s for n, s in services.items() if n != "aggregator"}
    c.check(len(sites) >= 3, f"{len(sites)} site services, expected at least 3")
    ca_dir = os.path.realpath(os.path.join(kit, "ca"))

    for name, svc in services.items():
        c.check(svc.get("image"), f"{name}: no image")
        c.check(str(svc.get("restart", "no")).split(":")[0] in ("on-failure", "always", "unless-stopped"),
                f"{name}: restart policy {svc.get('restart')!r} does not restart a crashed container")
        for target, (src, ro) in mounts(svc).items():
            c.check(os.path.exists(src), f"{name}: bind source {src} (for {target}) does not exist")
            real = os.path.realpath(src)
            c.check(real != ca_dir and not real.startswith(ca_dir + os.sep),
                    f"{name}: mounts the CA folder ({src})")
        m = mounts(svc)
        if name != "aggregator":
            if c.check("/data" in m, f"{name}: no /data mount"):
                c.check(m["/data"][1], f"{name}: /data is not mounted read-only")
        if c.check("/state" in m, f"{name}: no /state mount"):
            c.check(not m["/state"][1] and os.path.isdir(m["/state"][0]),
                    f"{name}: /state ({m['/state'][0]}) is not a writable folder mount")
            cmd = svc.get("command", [])
            c.check("--state-dir" in cmd and cmd[cmd.index("--state-dir") + 1] == "/state",
                    f"{name}: the command does not put its state in /state")
        gpu = (svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices"))
        if gpu:
            c.check(name != "aggregator", "the aggregator reserves a GPU (its image is CPU only)")
            c.check(all(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in gpu),
                    f"{name}: a device reservation that is not an NVIDIA GPU")

    aconf = check_kit(c, "aggregator", agg, "aggregator.conf")
    if not aconf:
        return
    admitted = [s.strip() for s in aconf.get("sites", "").split(",") if s.strip()]
    listen_port = aconf.get("listen", "").rsplit(":", 1)[-1]
    published = [str(p).rsplit(":", 1)[-1] for p in agg.get("ports", [])]
    c.check(listen_port in published,
            f"aggregator: listens on port {listen_port}, publishes container port(s) {published}")
    names = {"aggregator"}
    for net in (agg.get("networks") or {}).values():
        names.update((net or {}).get("aliases", []))
    san = cert_names(os.path.join(mounts(agg)["/kit"][0], aconf.get("cert", "")))

    for name, svc in sites.items():
        conf = check_kit(c, name, svc, "node.conf")
        if not conf:
            continue
        c.check(conf.get("site") == name, f"{name}: its kit is for site {conf.get('site')!r}")
        c.check(name in admitted, f"{name}: not in the aggregator's site list {admitted}")
        host, _, port = conf.get("aggregator", "").rpartition(":")
        c.check(host in names, f"{name}: dials {host!r}, which the aggregator is not called on the "
                               f"network (names: {sorted(names)})")
        c.check(port == listen_port, f"{name}: dials port {port}, the aggregator listens on {listen_port}")
        want = conf.get("server_name") or host
        if san is not None:
            c.check(want in san, f"{name}: checks the name {want!r}, the aggregator certificate has {sorted(san)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kit", required=True, help="a folder written by fedseg provision")
    ap.add_argument("--data", required=True, help="a folder with one case folder per site")
    ap.add_argument("--run", required=True, help="a folder with aggregator/ and site_K/ in it")
    ap.add_argument("--schema", help="the Compose Specification's compose-spec.json")
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()

    raw = {}
    for f in a.files:
        with open(f, encoding="utf-8") as fh:
            merge(raw, yaml.safe_load(fh) or {})
    c = Checker()
    for var in REQUIRED:
        env = {k: v for k, v in os.environ.items() if k not in REQUIRED}
        env.update({k: "/x" for k in REQUIRED if k != var})
        try:
            interpolate(raw, env)
            c.check(False, f"{var} unset: interpolation went on (it should be ${{{var}:?...}})")
        except Unset:
            c.check(True, "")
    env = dict(os.environ)
    env.update({"FEDSEG_KIT": os.path.abspath(a.kit), "FEDSEG_DATA": os.path.abspath(a.data),
                "FEDSEG_RUN": os.path.abspath(a.run)})
    doc = interpolate(raw, env)
    if a.schema:
        import json
        try:
            import jsonschema
        except ImportError:
            sys.stderr.write("check_compose: --schema needs the jsonschema module\n")
            return 2
        with open(a.schema, encoding="utf-8") as fh:
            schema = json.load(fh)
        errors = list(jsonschema.Draft7Validator(schema).iter_errors(doc))
        for e in errors:
            c.check(False, f"schema: {'/'.join(map(str, e.path))}: {e.message}")
        c.check(True, "") if not errors else None
    run_checks(doc, a.kit, c)
    for f in c.failed:
        print("FAIL:", f)
    print(f"check_compose: {c.passed} checks passed, {len(c.failed)} failed"
          f"{' (schema validated)' if a.schema else ''}")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
