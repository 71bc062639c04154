#!/usr/bin/env python3
"""bench/flower_bench.py — the Flower side of the federation benchmark.

A Flower server (FedAvg) and N clients on this machine, over Flower's real
gRPC network path on 127.0.0.1 (flwr.server.start_server / flwr.client.
start_client, the "grpc-bidi" fleet transport; plaintext, or TLS with --tls), each client a
separate process running a NumPyClient that does no training: fit() adds a
fixed per-client delta to the global model it received and returns it (one
float32 vector of --params values) with its sample count. The same number of
rounds as fedseg's side; evaluation is switched off so a round is exactly:
send the global model to every client, receive every update, aggregate.

Timing: a FedAvg subclass stamps time.monotonic() when configure_fit has
sampled the round's clients (it first waits until all are connected) and when
aggregate_fit has finished; round wall time = the
difference (the clients' training time is zero, so this is the round
overhead). Correctness: after the last round the global model must equal
w0 + rounds · (weighted mean of the deltas) within float32 rounding, else
exit 1.

Prints one JSON object (impl "flower", flwr and numpy versions, clients,
params, rounds, round_seconds per round, median, the check's worst error,
the server's peak RSS) on stdout; logs go to stderr.

    flower_bench.py [--clients 10] [--params 7766372] [--rounds 3] [--port 0] [--tls DIR]

With --tls DIR the server serves TLS (Flower's start_server certificates: CA,
server certificate, key from DIR/ca.crt, DIR/aggregator.crt,
DIR/aggregator.key) and the clients verify it with DIR/ca.crt — server-side
TLS only: Flower's grpc-bidi clients present no certificate.

Needs flwr and numpy (bench/run_fed.sh installs them into a virtual
environment). Not a test: it times nothing it does not print.
"""
import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


def delta_of(cid, n):
    """The fixed update of client cid: small, distinct per client."""
    import numpy as np
    i = np.arange(n, dtype=np.float32)
    return (np.float32(1e-3 * (cid + 1)) * np.sin(np.float32(1e-3) * i)).astype(np.float32)


def samples_of(cid):
    return 10 * (cid + 1)


def run_client(addr, cid, n, ca):
    import flwr
    import numpy as np

    d = delta_of(cid, n)

    class Site(flwr.client.NumPyClient):
        def get_parameters(self, config):
            return [np.zeros(n, dtype=np.float32)]

        def fit(self, parameters, config):
            w = parameters[0]
            return [w + d], samples_of(cid), {}

        def evaluate(self, parameters, config):
            return 0.0, samples_of(cid), {}

    tls = dict(root_certificates=open(ca, "rb").read(), insecure=False) if ca else dict(insecure=True)
    flwr.client.start_client(server_address=addr, client=Site().to_client(), max_retries=100,
                             max_wait_time=120, **tls)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def run_server(args):
    import flwr
    import numpy as np
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import FedAvg

    n = args.params
    w0 = np.zeros(n, dtype=np.float32)
    stamps = {}
    final = {}

    class TimedFedAvg(FedAvg):
        def configure_fit(self, server_round, parameters, client_manager):
            # super() waits until min_available_clients are connected: the
            # round starts once it has sampled them.
            out = super().configure_fit(server_round, parameters, client_manager)
            stamps.setdefault(server_round, [time.monotonic(), None])
            return out

        def aggregate_fit(self, server_round, results, failures):
            out = super().aggregate_fit(server_round, results, failures)
            stamps[server_round][1] = time.monotonic()
            if failures:
                print(f"flower_bench: round {server_round}: {len(failures)} failures",
                      file=sys.stderr)
            final["w"] = out[0]
            final["n"] = len(results)
            return out

    strategy = TimedFedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=args.clients,
                           min_evaluate_clients=0, min_available_clients=args.clients,
                           initial_parameters=ndarrays_to_parameters([w0]))
    port = args.port or free_port()
    addr = f"127.0.0.1:{port}"
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0")
    certs = None
    extra = []
    if args.tls:
        certs = tuple(open(os.path.join(args.tls, f), "rb").read()
                      for f in ("ca.crt", "aggregator.crt", "aggregator.key"))
        extra = ["--ca", os.path.join(args.tls, "ca.crt")]
    clients = [subprocess.Popen([sys.executable, __file__, "--role", "client", "--addr", addr,
                                 "--cid", str(c), "--params", str(n)] + extra, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for c in range(args.clients)]
    t0 = time.monotonic()
    try:
        flwr.server.start_server(server_address=addr,
                                 config=flwr.server.ServerConfig(num_rounds=args.rounds),
                                 strategy=strategy, certificates=certs)
    finally:
        for p in clients:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
    total = time.monotonic() - t0

    rounds = [stamps[r][1] - stamps[r][0] for r in sorted(stamps) if stamps[r][1] is not None]
    status = 0
    worst = float("inf")
    if "w" in final and final["w"] is not None and len(rounds) == args.rounds:
        w = parameters_to_ndarrays(final["w"])[0].astype(np.float64)
        tot = sum(samples_of(c) for c in range(args.clients))
        mean = sum(samples_of(c) * delta_of(c, n).astype(np.float64)
                   for c in range(args.clients)) / tot
        worst = float(np.max(np.abs(w - args.rounds * mean)))
        scale = float(np.max(np.abs(args.rounds * mean)))
        if not worst <= 1e-5 * max(scale, 1e-3):
            print(f"flower_bench: the final model is not w0 + rounds * mean delta "
                  f"(worst error {worst:g})", file=sys.stderr)
            status = 1
    else:
        print(f"flower_bench: only {len(rounds)} of {args.rounds} rounds completed",
              file=sys.stderr)
        status = 1
    out = dict(impl="flower", flwr=flwr.__version__, numpy=np.__version__,
               python=sys.version.split()[0], transport="grpc-bidi (start_server/start_client), "
               + ("server TLS" if args.tls else "plaintext") + ", 127.0.0.1", tls=bool(args.tls),
               clients=args.clients, params=n, rounds=args.rounds,
               update_bytes=4 * n, round_seconds=[round(x, 4) for x in rounds],
               median_round_s=round(statistics.median(rounds), 4) if rounds else None,
               total_s=round(total, 3), check_worst_error=worst,
               server_peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                         / 1024.0, 1))
    print(json.dumps(out), flush=True)
    return status


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--params", type=int, default=7766372)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--role", choices=("server", "client"), default="server")
    ap.add_argument("--addr")
    ap.add_argument("--cid", type=int, default=0)
    ap.add_argument("--tls", metavar="DIR",
                    help="serve TLS with DIR/ca.crt, DIR/aggregator.crt, DIR/aggregator.key "
                         "(e.g. a consortium's aggregator folder); clients verify with ca.crt")
    ap.add_argument("--ca", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "client":
        run_client(args.addr, args.cid, args.params, args.ca)
        return 0
    if args.clients < 1 or args.params < 1 or args.rounds < 1:
        ap.error("--clients, --params and --rounds must be positive")
    return run_server(args)


if __name__ == "__main__":
    sys.exit(main())
