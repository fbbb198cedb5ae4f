"""The seed's usage example, end to end, in one command (`make demo`).

Without an AWS account configured it runs against the local stand-ins the tests use: a moto
server for AWS, an emulated instance boot (a real sshd per instance, on 127.0.2.x), and a real
Covalent server, all in a temporary directory that is removed at the end. With AWS credentials
configured (and `--local` not given) it dispatches the same example to real AWS.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import (
    BootError,
    EmulatedBoot,
    Image,
    MotoServer,
    create_loopback_network,
)
from harness.covalent_server import CovalentPaths, CovalentServer, client_isolation, point_client_at
from harness.moto import patched_environ
from seed_example import installed_pins, make_experiment

# covalent (and this package, which imports it) is imported only once the client is isolated:
# covalent reads its config, and the default executor, when it is imported.

# What `ec2_executor.phases` logs at INFO, through Covalent's logger, into the server's log.
PHASE = re.compile(r"(ec2-executor-\S+): (.+) took ([\d.]+)s")
# Its cost lines: the timing line ("done (...; cost ...)") and, once the deletion verified in
# the background completes, the final figure ("deletion verified; cost ...").
COST = re.compile(r"(ec2-executor-\S+): (?:done \(.*?; |deletion verified; )(cost .*)$", re.M)


# --- running it ------------------------------------------------------------------------------


def dispatch(server: CovalentServer, executor: Any, deps_pip: Any) -> float:
    import covalent as ct

    started = time.monotonic()
    dispatch_id = ct.dispatch(make_experiment(executor, deps_pip))(C=1.0, gamma=0.7)
    print(f"dispatched {dispatch_id}; waiting for the result ...")
    result = server.wait_for_result(dispatch_id, timeout=1800)
    if str(result.status) != "COMPLETED":
        graph = result.lattice.transport_graph
        for node_id in graph._graph.nodes:
            node = result.get_node_result(node_id)
            if str(node["status"]) != "COMPLETED":
                print(
                    f"--- {node['node_name']}: {node['status']}\n{node['error'] or ''}"
                    f"{node['stderr'] or ''}",
                    file=sys.stderr,
                )
        raise SystemExit(f"the workflow ended {result.status}: {result.error}")
    print(f"\nscore: {result.result}   (workflow took {time.monotonic() - started:.1f}s)")
    return float(result.result)


def phases_in(log: str) -> list[tuple[str, float]]:
    """Each phase the executor logged, in order, with its seconds."""
    return [(name, float(seconds)) for _, name, seconds in PHASE.findall(log)]


def print_phases(server: CovalentServer) -> None:
    phases = phases_in(server.paths.server_log.read_text(errors="replace"))
    if not phases:  # the README promises them: a silent gap would hide a broken log
        raise SystemExit(
            "the Covalent server's log names no executor phase ('<stack>: <phase> took <s>s', "
            f"at INFO); its end:\n{server.log_tail(20)}"
        )
    print("\nexecutor phases (from the Covalent server's log):")
    for name, seconds in phases:
        print(f"  {name:<20} {seconds:7.2f}s")


def costs_in(log: str) -> dict[str, str]:
    """Each stack's latest cost line: the final one once its deletion was verified."""
    return {stack: cost for stack, cost in COST.findall(log)}


def print_cost(server: CovalentServer, heading: str) -> None:
    costs = costs_in(server.paths.server_log.read_text(errors="replace"))
    if not costs:
        raise SystemExit(
            "the Covalent server's log names no electron's cost ('<stack>: done (...; cost "
            f"...)'); its end:\n{server.log_tail(20)}"
        )
    print(f"\n{heading}")
    total = 0.0
    for stack, cost in costs.items():
        print(f"  {stack}: {cost}")
        usd = re.match(r"cost \$([\d.]+)", cost)
        total += float(usd[1]) if usd else 0.0
    print(f"  total: ${total:.4f}")


def run_local(base: Path, paths: CovalentPaths) -> None:
    import covalent as ct

    print("No AWS account configured (or --local): using a local moto server and emulated boot.")
    with contextlib.ExitStack() as stack:
        moto = MotoServer.start()
        stack.callback(moto.stop)
        stack.enter_context(patched_environ(moto.environment(base / "aws")))
        network = create_loopback_network(moto.client("ec2"))
        # An image with this venv's packages: covalent, numpy, sklearn.
        boot = EmulatedBoot(
            moto.url, image=Image.local(base / "image"), base_dir=base / "instances"
        )
        stack.enter_context(boot)
        from integration.executor_support import harness_options

        settings = harness_options(network.subnet_id, str(base / "remote-cache"))
        server = CovalentServer.start(
            paths,
            env={**moto.env, "EC2_EXECUTOR_CACHE_DIR": str(base / "templates")},
            log_level="info",
        )
        stack.callback(server.stop)
        point_client_at(server)
        # The seed's executor, plus the local settings (loopback subnet, private address, ...).
        executor = ct.executor.EC2Executor(instance_type="t2.micro", volume_size=8, **settings)
        dispatch(server, executor, installed_pins("numpy", "scikit-learn"))
        print_phases(server)
        print_cost(
            server,
            "what the same run would have cost on AWS (the instance for the time it took here, "
            "its public IPv4 address and its gp3 volume, at the prices said):",
        )
        left = [
            s
            for s in moto.client("cloudformation").list_stacks()["StackSummaries"]
            if s["StackStatus"] != "DELETE_COMPLETE"
        ]
        print(f"\nstacks left behind: {len(left)}")
        if left:
            raise SystemExit(f"stacks left behind: {left}")


def run_aws(paths: CovalentPaths) -> None:
    import covalent as ct

    print("AWS credentials found: the example runs on a real EC2 instance (it bills).")
    with CovalentServer.start(paths, log_level="info") as server:
        point_client_at(server)
        executor = ct.executor.EC2Executor(instance_type="t2.micro", volume_size=8)
        dispatch(server, executor, ct.DepsPip(packages=["numpy", "scikit-learn"]))
        print_phases(server)
        print_cost(server, "what the run cost on AWS (an estimate, at the prices said):")


def aws_configured() -> bool:
    """Credentials from the environment or the AWS files; the instance-metadata service is
    not asked (an instance role alone does not make this machine "configured")."""
    import botocore.session

    session = botocore.session.get_session()
    resolver = session.get_component("credential_provider")
    for provider in ("iam-role", "container-role"):
        resolver.remove(provider)
    return session.get_credentials() is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local", action="store_true", help="never use real AWS")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="ec2-executor-demo-") as base:
        paths = CovalentPaths.create(Path(base) / "covalent")
        with client_isolation(paths):  # first: covalent reads its config when imported
            if not args.local and aws_configured():
                run_aws(paths)
            else:
                try:
                    run_local(Path(base), paths)
                except BootError as exc:  # a missing tool is one line, not a traceback
                    sys.exit(f"demo: {exc}")
    print("everything the demo started is stopped and removed.")


if __name__ == "__main__":
    main()
