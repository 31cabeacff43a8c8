"""The one entry point: ``salesfc prep | train | infer | check | backtest | serve | submit | launch | demo``.

Stages import their modules only when run, so ``--help`` answers at once (importing Feast alone takes seconds).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import NoReturn

from salesfc import __version__, settings
from salesfc.errors import UserError

COMMANDS = {
    "prep": ("salesfc.prep",
             "Build the raw data (synthetic or the Kaggle CSVs), engineer leak-free features, load the offline "
             "store, apply the Feast definitions and materialize the latest week of every series online. "
             "Running it twice changes nothing."),
    "train": ("salesfc.train",
              "Train the forecasting model with DistributedDataParallel (gloo on CPU, NCCL on GPU). Run it "
              "plainly, with --nproc-per-node N, or under torchrun (`torchrun -m salesfc train`). Rank 0 reads "
              "the training set through Feast; rank 0 writes models/<run-id>/."),
    "infer": ("salesfc.infer",
              "Forecast next week for every store department from the online store, evaluate the model against "
              "the baselines on the held-out weeks, and write predictions, metrics and a report."),
    "check": ("salesfc.check",
              "Verify a deployment: database reachable, feature service registered, online store filled, model "
              "artifacts loadable, metrics under the threshold. Exits non-zero with the reason (helm test)."),
    "backtest": ("salesfc.backtest",
                 "Measure accuracy the honest way: a rolling-origin backtest (default 4 folds of 13 weeks, the last "
                 "year, holidays included). For each fold the model, the tuned tree peer and the naive baselines "
                 "are refitted on the weeks before it only; prints WMAE per fold and the mean, and writes "
                 "backtests/<id>/ (backtest.json, backtest.md, backtest.png, predictions.parquet)."),
    "serve": ("salesfc.serve",
              "Serve real-time forecasts over HTTP: POST /predict for one or many store departments (features from "
              "the online store, the same preprocessing and model as infer), /healthz, /readyz, /metrics, /docs. "
              "Follows the latest finished run without a restart."),
    "submit": ("salesfc.submit",
               "Submit training to a cluster as a Kubeflow TrainJob on a salesfc release's training runtime, through "
               "the Kubeflow SDK's TrainerClient: the image's own `torchrun -m salesfc train` with the nodes, "
               "processes, resources and training settings given here. --wait waits for it and prints its progress; "
               "--follow streams rank 0's log."),
    "launch": ("salesfc.launch",
               "Create a chart release's TrainJob from the ConfigMap the chart renders it into, owned by that "
               "ConfigMap; keep it when it already exists (the same training) and delete the release's earlier "
               "ones. The chart runs it as a hook after prep, so trainer pods never wait for prep."),
    "demo": ("salesfc.demo",
             "Run prep, train (2 processes) and infer locally on the embedded default store, and say where "
             "everything went."),
}


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> Parser:
    parser = Parser(prog="salesfc", description="Sales demand forecasting: prep -> train -> infer.",
                    epilog="Every option also reads a SALESFC_* environment variable (named in each --help).")
    parser.add_argument("--version", action="version", version=f"salesfc {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True
    for name, (_, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text.split(". ")[0].rstrip(".") + ".", description=help_text)
        settings.add_to_parser(sub, name)
    return parser


def setup_logging(level: str) -> None:
    rank = os.environ.get("RANK")
    prefix = f"[rank {rank}] " if rank is not None else ""
    logging.basicConfig(level=level, stream=sys.stderr, force=True,
                        format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # Feast and its dependencies are chatty at INFO; keep their warnings.
    for noisy in ("feast", "ibis", "sqlalchemy", "urllib3", "matplotlib", "numexpr"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command
    try:
        values = settings.resolve(args, command)
    except settings.SettingError as err:
        parser.exit(2, f"salesfc {command}: error: {err}\n")
    setup_logging(values["log_level"])
    for name in settings.unknown_environment():
        logging.getLogger("salesfc").warning("%s is set but no setting reads it (a typo?)", name)
    # Stages of one deployment run as different users on a shared volume (OpenShift assigns arbitrary UIDs in
    # group 0), so what one stage writes must stay writable by the group for the next.
    os.umask(0o002)
    config = settings.Config(command, values)
    module = importlib.import_module(COMMANDS[command][0])
    try:
        code = module.run(config)
    except UserError as err:
        print(f"salesfc {command}: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    raise SystemExit(code or 0)


if __name__ == "__main__":
    main()
