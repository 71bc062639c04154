#!/usr/bin/env python3
"""bench/flower_secagg.py — Flower's SecAgg+ side of the secure-aggregation
benchmark (bench/run_secagg.sh).

Flower's own SecAgg+ (flwr.server.workflow.SecAggPlusWorkflow on the server,
flwr.client.mod.secaggplus_mod on the clients) in Flower's Simulation Engine
on this machine: N clients, each a NumPyClient that does no training — fit()
adds a fixed per-client delta (the same as bench/flower_bench.py's) to the
global model and returns it with its sample count — for R rounds, FedAvg
weighting, evaluation off. Each client has K shares (K = N is full
SecAgg; Flower counts the client's own share) and the reconstruction
threshold is T (default: fedseg's, 2n/3 + 1 below the shares).

Timing: a FedAvg subclass stamps time.monotonic() when configure_fit has
sampled the round's clients and when aggregate_fit has finished (the
workflow calls both around its stages: key set-up, share keys, masked
collection, unmasking); round wall time = the difference. The Simulation
Engine runs the clients in this process's Ray workers (no network), so the
figure is the protocol's compute and Flower's messaging, not a transport.
Correctness: after the last round the global model must be within the
quantisation error of w0 + R * (weighted mean of the deltas), else exit 1.

Prints one JSON object (impl "flower-secagg+", versions, clients, shares,
threshold, params, rounds, round_seconds, median, the check's worst error)
on stdout; logs go to stderr.

    flower_secagg.py [--clients 10] [--params 7766372] [--rounds 3] [--shares K] [--threshold T]

Needs flwr[simulation] and numpy (bench/run_secagg.sh installs them into a
virtual environment). Not a test: it times nothing it does not print.
"""
import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import numpy as np  # noqa: E402
import flwr  # noqa: E402
from flwr.client import ClientApp, NumPyClient  # noqa: E402
from flwr.client.mod import secaggplus_mod  # noqa: E402
from flwr.common import Context, ndarrays_to_parameters, parameters_to_ndarrays  # noqa: E402
from flwr.server import LegacyContext, ServerApp, ServerConfig  # noqa: E402
from flwr.server.strategy import FedAvg  # noqa: E402
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402


def delta_of(cid, n):
    """The fixed update of client cid (as bench/flower_bench.py)."""
    i = np.arange(n, dtype=np.float32)
    return (np.float32(1e-3 * (cid + 1)) * np.sin(np.float32(1e-3) * i)).astype(np.float32)


def samples_of(cid):
    return 10 * (cid + 1)


ap = argparse.ArgumentParser()
ap.add_argument("--clients", type=int, default=10)
ap.add_argument("--params", type=int, default=7766372)
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--shares", type=int, default=0,
                help="shares per client, itself included (0 = clients: full SecAgg)")
ap.add_argument("--threshold", type=int, default=0,
                help="reconstruction threshold (0 = 2/3 of the clients + 1, below the shares)")
args = ap.parse_args()
N, P, R = args.clients, args.params, args.rounds
K = args.shares or N
T = args.threshold or min((2 * N) // 3 + 1, K - 1)  # fedseg's default t

stamps = {}
final = {}


class Client(NumPyClient):
    def __init__(self, cid):
        self.cid = cid

    def fit(self, parameters, config):
        w = parameters[0]
        return [w + delta_of(self.cid, w.size)], samples_of(self.cid), {}


def client_fn(context: Context):
    return Client(int(context.node_config["partition-id"])).to_client()


class Timed(FedAvg):
    def configure_fit(self, server_round, parameters, client_manager):
        out = super().configure_fit(server_round, parameters, client_manager)
        stamps.setdefault(server_round, [time.monotonic(), None])
        return out

    def aggregate_fit(self, server_round, results, failures):
        out = super().aggregate_fit(server_round, results, failures)
        stamps[server_round][1] = time.monotonic()
        if out[0] is not None:
            final["w"] = parameters_to_ndarrays(out[0])[0]
        return out


strategy = Timed(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=N, min_available_clients=N,
                 initial_parameters=ndarrays_to_parameters([np.zeros(P, dtype=np.float32)]))
server_app = ServerApp()


@server_app.main()
def main(grid, context: Context) -> None:
    ctx = LegacyContext(context=context, config=ServerConfig(num_rounds=R), strategy=strategy)
    DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(num_shares=K, reconstruction_threshold=T))(grid, ctx)


client_app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])
run_simulation(server_app=server_app, client_app=client_app, num_supernodes=N,
               backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})

rounds = [stamps[r][1] - stamps[r][0] for r in sorted(stamps) if stamps[r][1] is not None]
w = final.get("w")
worst = float("nan")
ok = w is not None and len(rounds) == R
if ok:
    tot = sum(samples_of(c) for c in range(N))
    mean = sum(delta_of(c, P).astype(np.float64) * samples_of(c) for c in range(N)) / tot
    worst = float(np.max(np.abs(w.astype(np.float64) - R * mean)))
    ok = worst < 1e-3
print(json.dumps({"impl": "flower-secagg+", "flwr": flwr.__version__, "numpy": np.__version__, "clients": N,
                  "shares": K, "threshold": T, "params": P, "rounds": R,
                  "round_seconds": [round(x, 4) for x in rounds],
                  "median_round_s": round(statistics.median(rounds), 4) if rounds else None,
                  "check_worst_error": worst, "ok": ok}))
sys.exit(0 if ok else 1)
