"""Launch training with torchrun on one node or several, after a preflight all-reduce.

    python -m launch -- -m pipeline.train --config configs/alexnet.yaml           # 1 node, all GPUs
    python -m launch --nproc 2 -- -m pipeline.train --config configs/tiny.yaml    # 2 CPU processes
    # 4 nodes x 8 GPUs: run on every node, with the first node's address
    python -m launch --nnodes 4 --rdzv-endpoint node001:29500 --rdzv-id exp1 \
        -- -m pipeline.train --config configs/alexnet.yaml
    python -m launch --dry-run --nproc 8 -- -m pipeline.train --config ...        # print, don't run
    # elastic: restart the group up to 3 times after a failure (it resumes from the run dir's
    # newest good checkpoint); 2 to 4 nodes may take part
    python -m launch --max-restarts 3 --nnodes 2:4 --rdzv-endpoint node001:29500 -- -m ...

What it adds over calling torchrun directly:
  * inputs are checked first: HOST:PORT format, port range, node count, and that HOST resolves.
    Several nodes need an explicit rendezvous endpoint: there is no localhost fallback, which
    would make every node form its own world and wait forever;
  * the exact torchrun commands are printed before they run;
  * a preflight (`launch.preflight`) first forms the same world and does one all-reduce, so a
    wrong or unreachable rendezvous host fails within --rdzv-timeout seconds with a message
    naming the host and port, before any data is read;
  * torchrun forwards SIGUSR1/SIGUSR2 as well as SIGTERM/SIGINT to the workers (by default it
    lets SIGUSR1 kill itself), and waits --shutdown-timeout seconds, not 30, before SIGKILL, so
    the trainer can finish its checkpoint (pipeline.train exits 75 after one).

  * on GPUs, NCCL's async error handling and its flight recorder (dumped on a collective
    timeout into RUN_DIR/nccl_trace/) are turned on for the workers (`worker_environment`);
  * the exit status is 75 (EXIT_STOPPED, what slurm/train.sbatch requeues on) when a worker
    exited 75 (a stop signal's checkpoint, or the stall watchdog) and every other failed worker
    did too or was killed by a signal, as the stalled rank is (`failed_status`; torchrun itself
    exits 1 for any failed worker).

torchrun runs inside this process (its `run()`, as `python -m torch.distributed.run` would), so
a signal sent to this process reaches torchrun's handlers directly; during the preflight,
signals are forwarded to the preflight's torchrun.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.errors import EXIT_STOPPED, EXIT_USAGE, UserError

logger = logging.getLogger(__name__)

# Signals torchrun passes on to its workers (pipeline.train checkpoints on TERM/USR1/USR2).
FORWARDED_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
TORCHRUN = (sys.executable, "-m", "torch.distributed.run")
# payloads whose --config / overrides name the device the preflight must test
TRAINING_MODULES = ("pipeline.train", "pipeline.doctor")


class LaunchError(UserError):
    """A launch input a user can fix; the message says what was received and what to do."""


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
    nproc_per_node: int  # worker processes per node (GPUs, or CPU processes with gloo)
    nnodes: int = 1  # the most nodes (MAX of --nnodes MIN:MAX)
    min_nodes: int = 0  # elastic: the fewest nodes to train on (0: exactly nnodes)
    max_restarts: int = 0  # torchrun restarts the group this often after a failure
    rdzv_host: str | None = None  # first node's address; None = single-node standalone
    rdzv_port: int | None = None
    rdzv_id: str = "imagenet"  # the same on every node; distinct per concurrent job
    rdzv_timeout_s: int = 300  # bound on forming the world (joining and store connection)
    shutdown_timeout_s: int = 120  # grace between the forwarded signal and SIGKILL
    preflight_timeout_s: int = 120  # process-group timeout of the preflight all-reduce
    device: str = "auto"  # the training command's train.device: the preflight tests that one

    @property
    def endpoint(self) -> str:
        return f"{format_host(self.rdzv_host)}:{self.rdzv_port}" if self.rdzv_host else "standalone"


def format_host(host: str | None) -> str:
    """Bracket IPv6 literals so HOST:PORT stays unambiguous."""
    return f"[{host}]" if host and ":" in host else str(host)


def parse_endpoint(text: str) -> tuple[str, int]:
    """'host:port' (or '[v6]:port') → (host, port); LaunchError when malformed."""
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
    else:
        host, sep, port_text = text.rpartition(":")
    if not sep or not host or ":" in host and not text.startswith("["):
        raise LaunchError(
            f"--rdzv-endpoint {text!r} is not HOST:PORT: give the first node's address and a free "
            "port, e.g. --rdzv-endpoint node001:29500"
        )
    try:
        port = int(port_text)
    except ValueError:
        raise LaunchError(f"--rdzv-endpoint {text!r}: port {port_text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise LaunchError(f"--rdzv-endpoint {text!r}: port {port} is outside 1-65535")
    return host, port


def resolve_host(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to on this node; LaunchError naming it when it does not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise LaunchError(
            f"rendezvous host {host!r} does not resolve on {socket.gethostname()} "
            f"({err.strerror}): give the first node's hostname or IP address as it is reachable "
            "from every node"
        ) from None
    return sorted({info[4][0] for info in infos})


def is_loopback(addresses: list[str]) -> bool:
    return bool(addresses) and all(
        ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses
    )


def training_run_dir(payload: list[str]) -> str | None:
    """train.run_dir of a training payload (None for other commands or a bad config)."""
    cfg = training_config(payload)
    return cfg.train.run_dir if cfg is not None else None


def training_device(payload: list[str]) -> str:
    """train.device of a `-m pipeline.train` / `-m pipeline.doctor` payload (its --config and
    overrides), so the preflight tests the backend training will use; "auto" for other commands
    and for a config the trainer will reject with its own message."""
    cfg = training_config(payload)
    return cfg.train.device if cfg is not None else "auto"


def training_config(payload: list[str]):
    """The Config a training payload resolves to (its --config and overrides); None for other
    commands and for a config the trainer will reject with its own message."""
    if len(payload) < 2 or payload[0] != "-m" or payload[1] not in TRAINING_MODULES:
        return None
    from pipeline.config import load_config  # deferred: only a training payload needs it

    config, overrides, rest = None, [], payload[2:]
    for index, token in enumerate(rest):
        if token == "--config" and index + 1 < len(rest):
            config = rest[index + 1]
        elif token.startswith("--config="):
            config = token.split("=", 1)[1]
        elif not token.startswith("-") and "=" in token and "." in token.split("=", 1)[0]:
            overrides.append(token)
    try:
        return load_config(config, overrides)
    except UserError:
        return None


def count_visible_gpus() -> int:
    """GPUs torch can use here; LaunchError when the node has GPUs but CUDA cannot start."""
    from pipeline.distributed import CudaProbe  # deferred: `--nproc N --dry-run` needs no torch

    probe = CudaProbe.read()
    if not probe.available and probe.gpus_present:
        raise LaunchError(
            f"this node shows GPUs ({probe.gpus_present}) but CUDA cannot start: "
            f"{probe.torch_warning or 'torch.cuda.is_available() is False'}; update the NVIDIA "
            "driver or the torch build, or pass --nproc N with train.device=cpu to train on "
            "the CPU on purpose"
        )
    return probe.device_count


def build_plan(args: argparse.Namespace) -> LaunchPlan:
    """Check the arguments and turn them into a plan; LaunchError on anything wrong."""
    min_nodes, nnodes = parse_nnodes(args.nnodes)
    args.nnodes = nnodes
    min_nodes = 0 if min_nodes == nnodes else min_nodes
    if args.max_restarts < 0:
        raise LaunchError(f"--max-restarts {args.max_restarts}: must be >= 0")
    if args.nproc is not None and args.nproc < 1:
        raise LaunchError(f"--nproc {args.nproc}: need at least 1 process per node")
    for name in ("rdzv_timeout", "shutdown_timeout", "preflight_timeout"):
        if getattr(args, name) < 1:
            raise LaunchError(
                f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1 second"
            )
    nproc = args.nproc
    if nproc is None:
        if args.device == "cpu":
            raise LaunchError("train.device=cpu: pass --nproc N to run N CPU (gloo) processes")
        nproc = count_visible_gpus()
        if nproc == 0:
            raise LaunchError(
                "no CUDA GPU is visible on this node: pass --nproc N with train.device=cpu to "
                "run N CPU (gloo) processes"
            )
    host = port = None
    if args.rdzv_endpoint:
        host, port = parse_endpoint(args.rdzv_endpoint)
        addresses = resolve_host(host, port)
        if args.nnodes > 1 and is_loopback(addresses):
            logger.warning(
                "rendezvous host %s is a loopback address (%s): with %d nodes this only works when "
                "every node is this machine",
                host,
                ", ".join(addresses),
                args.nnodes,
            )
    elif args.nnodes > 1:
        raise LaunchError(
            f"--nnodes {args.nnodes} needs --rdzv-endpoint HOST:PORT of the first node (the same "
            "on every node); there is no localhost default, which would leave each node waiting "
            "alone"
        )
    if not args.rdzv_id or any(c.isspace() or c in ",=" for c in args.rdzv_id):
        raise LaunchError(
            f"--rdzv-id {args.rdzv_id!r}: use a non-empty id without spaces, ',' or '='"
        )
    return LaunchPlan(
        nproc_per_node=nproc,
        nnodes=args.nnodes,
        rdzv_host=host,
        rdzv_port=port,
        rdzv_id=args.rdzv_id,
        rdzv_timeout_s=args.rdzv_timeout,
        shutdown_timeout_s=args.shutdown_timeout,
        preflight_timeout_s=args.preflight_timeout,
        device=args.device,
        min_nodes=min_nodes,
        max_restarts=args.max_restarts,
    )


def parse_nnodes(text: str) -> tuple[int, int]:
    """'N' or 'MIN:MAX' → (min nodes, max nodes); LaunchError when malformed."""
    low, _, high = str(text).partition(":")
    try:
        low_count, high_count = int(low), int(high or low)
    except ValueError:
        raise LaunchError(f"--nnodes {text!r}: give N or MIN:MAX, e.g. --nnodes 2:4") from None
    if low_count < 1 or high_count < low_count:
        raise LaunchError(f"--nnodes {text}: need at least 1 node, and MIN <= MAX")
    return low_count, high_count


def worker_environment(device: str, run_dir: str | None, visible_gpus: int) -> dict[str, str]:
    """The environment NCCL reads for failure handling, for a run that trains on GPUs (cuda, or
    auto with GPUs visible); {} on the CPU. Names as torch 2.13 reads them: the TORCH_FR_*
    names and their older TORCH_NCCL_* aliases are both set (ProcessGroupNCCL.hpp,
    FlightRecorder.hpp). A value already in the environment wins."""
    if device == "cpu" or (device == "auto" and visible_gpus == 0):
        return {}
    trace_prefix = str(Path(run_dir or ".") / "nccl_trace" / "rank_")
    settings = {
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",  # a failed or timed-out collective aborts
        "TORCH_NCCL_TRACE_BUFFER_SIZE": "2000",  # flight recorder: the last 2000 collectives
        "TORCH_FR_BUFFER_SIZE": "2000",
        "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",  # ... written out when a collective times out
        "TORCH_NCCL_DEBUG_INFO_TEMP_FILE": trace_prefix,  # one file per rank: PREFIX<rank>
        "TORCH_FR_DUMP_TEMP_FILE": trace_prefix,
    }
    return {key: os.environ.get(key, value) for key, value in settings.items()}


def build_torchrun_command(
    plan: LaunchPlan, payload: list[str], rdzv_id: str | None = None
) -> list[str]:
    """The torchrun command line that runs `payload` (e.g. ['-m', 'pipeline.train', ...])."""
    nodes = f"{plan.min_nodes}:{plan.nnodes}" if plan.min_nodes else str(plan.nnodes)
    command = [*TORCHRUN, f"--nnodes={nodes}", f"--nproc-per-node={plan.nproc_per_node}"]
    if plan.rdzv_host is None:
        command.append("--standalone")
    else:
        timeout = plan.rdzv_timeout_s
        command += [
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={plan.endpoint}",
            f"--rdzv-id={rdzv_id or plan.rdzv_id}",
            # join_timeout bounds waiting for the other nodes; read_timeout bounds connecting
            # to (and each read from) the first node's store: together, an unreachable or
            # wrong host fails within about rdzv_timeout_s instead of torchrun's 600 s.
            f"--rdzv-conf=join_timeout={timeout},read_timeout={timeout}",
        ]
    command += [
        # a restart after preemption is Slurm's (or your) job, from the checkpoint; after a
        # failed or killed worker, torchrun's with --max-restarts N (the trainer resumes from
        # the run dir's newest good checkpoint)
        f"--max-restarts={plan.max_restarts}",
        f"--signals-to-handle={','.join(FORWARDED_SIGNALS)}",
        f"--shutdown-timeout={plan.shutdown_timeout_s}",
        *payload,
    ]
    return command


def build_preflight_command(plan: LaunchPlan, report_file: Path) -> list[str]:
    """torchrun running launch.preflight over the same world (its own rendezvous id)."""
    payload = [
        "-m",
        "launch.preflight",
        f"--device={plan.device}",
        f"--timeout={plan.preflight_timeout_s}",
        f"--report-file={report_file}",
    ]
    return build_torchrun_command(plan, payload, rdzv_id=preflight_rdzv_id(plan))


def run_forwarding_signals(command: list[str]) -> tuple[int, int | None]:
    """Run `command`, passing on the signals torchrun handles; (exit status, signal received)."""
    child = subprocess.Popen(command)
    received: list[int] = []

    def forward(signum, _frame):
        received.append(signum)
        child.send_signal(signum)

    previous = {}
    for name in FORWARDED_SIGNALS:
        signum = getattr(signal, name)
        previous[signum] = signal.signal(signum, forward)
    try:
        while True:
            try:
                status = child.wait()
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries wait() itself
                continue
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return status, (received[0] if received else None)


def read_report(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def preflight_rdzv_id(plan: LaunchPlan) -> str:
    """The preflight's rendezvous id: its own, so that training then forms a fresh world."""
    return f"{plan.rdzv_id}-preflight"


def run_preflight(plan: LaunchPlan) -> int:
    """Form the world once and all-reduce; 0 when every rank answered, else an explained failure."""
    with tempfile.TemporaryDirectory(prefix="preflight-") as tmp:
        report_file = Path(tmp) / "report.json"
        command = build_preflight_command(plan, report_file)
        print(f"launch: preflight: {shlex.join(command)}", flush=True)
        status, signum = run_forwarding_signals(command)
        report = read_report(report_file)
    if signum is not None:
        print(
            f"launch: stopped by {signal.Signals(signum).name} during the preflight; training was "
            "not started",
            file=sys.stderr,
        )
        return 128 + signum
    if status == 0 and report and report.get("stage") == "done":
        return 0
    if report is None:
        # torchrun only starts workers once the rendezvous has completed.
        if plan.rdzv_host is None:
            reason = (
                "the preflight workers did not start on this node (see torchrun's output above)"
            )
        else:
            reason = (
                f"rendezvous at {plan.endpoint} (id {preflight_rdzv_id(plan)}) did not form "
                f"{plan.nnodes} nodes within {plan.rdzv_timeout_s} s: check that "
                f"{format_host(plan.rdzv_host)} is the first node's address, that port "
                f"{plan.rdzv_port} is reachable from every node, and that all {plan.nnodes} nodes "
                "were started with the same --rdzv-endpoint and --rdzv-id"
            )
    else:
        reason = (
            f"the workers started but the all-reduce across {plan.nnodes} node(s) failed within "
            f"{plan.preflight_timeout_s} s (see the preflight errors above): check the network "
            "between nodes (NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME) and the GPUs"
        )
    print(f"error: preflight failed (torchrun exit {status}): {reason}", file=sys.stderr)
    return 1


def split_payload(argv: list[str]) -> tuple[list[str], list[str]]:
    """(launcher options, command after '--')."""
    if "--" not in argv:
        return argv, []
    index = argv.index("--")
    return argv[:index], argv[index + 1 :]


def add_elastic_arguments(parser: argparse.ArgumentParser) -> None:
    """torchrun's elastic options, passed through: a node range and the restarts after failure."""
    parser.add_argument(
        "--nnodes", default="1", help="number of nodes, or MIN:MAX for elastic (default 1)"
    )
    parser.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        help="torchrun restarts the worker group this often after a failure (default 0)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m launch",
        usage=(
            "python -m launch [options] -- -m pipeline.train --config FILE [section.key=value ...]"
        ),
        description=__doc__.split("\n")[0],
    )
    parser.add_argument(
        "--nproc",
        type=int,
        default=None,
        help="processes per node (default: the visible GPUs; required on CPU)",
    )
    add_elastic_arguments(parser)
    parser.add_argument(
        "--rdzv-endpoint",
        default="",
        help="HOST:PORT of the first node, the same on every node (required for --nnodes > 1)",
    )
    parser.add_argument(
        "--rdzv-id",
        default="imagenet",
        help="rendezvous id, the same on every node; distinct for concurrent jobs",
    )
    parser.add_argument(
        "--rdzv-timeout",
        type=int,
        default=300,
        help="seconds to wait for all nodes to join, or to reach HOST:PORT (default 300)",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=int,
        default=120,
        help=(
            "seconds workers get to checkpoint after a forwarded signal before SIGKILL "
            "(default 120)"
        ),
    )
    parser.add_argument(
        "--preflight-timeout",
        type=int,
        default=120,
        help="seconds the preflight all-reduce may take once the world has formed (default 120)",
    )
    parser.add_argument("--no-preflight", action="store_true", help="skip the preflight all-reduce")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the torchrun commands and exit"
    )
    # not an option: main() reads it from the training command's config (training_device)
    parser.set_defaults(device="auto")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="launch: %(levelname)s %(message)s")
    options, payload = split_payload(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(options)
    if not payload:
        parser.error(
            "nothing to run: put the command after '--', e.g. -- -m pipeline.train --config FILE"
        )
    args.device = training_device(payload)
    try:
        plan = build_plan(args)
    except LaunchError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    command = build_torchrun_command(plan, payload)
    if args.dry_run:
        if not args.no_preflight:
            print(
                "launch: preflight: "
                f"{shlex.join(build_preflight_command(plan, Path('REPORT.json')))}"
            )
        print(f"launch: {shlex.join(command)}")
        return 0
    if not args.no_preflight:
        status = run_preflight(plan)
        if status != 0:
            return status
    os.environ.update(worker_environment(args.device, training_run_dir(payload), gpus_seen(args)))
    print(f"launch: {shlex.join(command)}", flush=True)
    sys.stderr.flush()
    return run_torchrun(command)


def gpus_seen(args: argparse.Namespace) -> int:
    """GPUs visible here, asked only when train.device=auto decides it (cuda: yes, cpu: no)."""
    return count_visible_gpus() if args.device == "auto" else 0


def run_torchrun(command: list[str]) -> int:
    """torchrun's own `run()` in this process; 75 when every failed worker exited 75."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(command[len(TORCHRUN) :]))
    except ChildFailedError as err:
        failures = sorted(err.failures.items())
        codes = {failure.exitcode for _, failure in failures}
        summary = ", ".join(f"rank {rank} exit {failure.exitcode}" for rank, failure in failures)
        status = failed_status(codes)
        print(f"launch: workers failed ({summary}): exit {status}", file=sys.stderr, flush=True)
        return status
    return 0


def failed_status(codes: set[int]) -> int:
    """75 when the group stopped to be resumed: some worker exited 75 (a stop signal's
    checkpoint, or the stall watchdog's verdict) and every other failed worker either did too or
    was killed by a signal (the stalled rank itself, stopped or hung, which torchrun's shutdown
    kills); 1 for anything else, such as a worker that crashed."""
    resumable = EXIT_STOPPED in codes and all(c == EXIT_STOPPED or c < 0 for c in codes)
    return EXIT_STOPPED if resumable else 1


if __name__ == "__main__":
    sys.exit(main())
