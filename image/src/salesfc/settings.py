"""Every setting salesfc has, in one table.

Each setting is a command-line flag with a ``SALESFC_*`` environment fallback (flag > environment > default).
The Helm chart only sets environment variables, the local runner only passes flags, and both are read here and
nowhere else. The one exception is the database password: it is read from ``SALESFC_PG_PASSWORD`` only, because a
password on a command line is visible to every user of the machine.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

ENV_PREFIX = "SALESFC_"
PASSWORD_ENV = "SALESFC_PG_PASSWORD"

STAGES = ("prep", "train", "infer", "check", "demo", "backtest")
ALL = STAGES + ("serve",)
PREP = ("prep", "demo")
# submit takes the training settings too, and hands them to the TrainJob it creates.
TRAIN = ("train", "demo", "backtest", "submit")
INFER = ("infer", "demo")
RUN = ("train", "infer", "check", "demo", "backtest", "serve")
SERVE = ("serve",)
SUBMIT = ("submit",)
# launch: the chart's hook that creates the release's TrainJob once prep has finished.
LAUNCH = ("launch",)


class SettingError(ValueError):
    """A setting has a value it cannot take; the message names the flag and the variable."""


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be a whole number of at least 1")
    return value


def quantile_list(text: str) -> tuple[float, ...]:
    try:
        values = {float(part) for part in text.split(",") if part.strip()}
    except ValueError:
        raise ValueError("must be comma-separated numbers between 0 and 1, e.g. 0.1,0.5,0.9") from None
    if any(not 0 < value < 1 for value in values):
        raise ValueError("must be numbers strictly between 0 and 1, e.g. 0.1,0.5,0.9")
    return tuple(sorted(values | {0.5}))


MAX_HORIZON = 39  # Kaggle's Walmart task: up to 39 weeks ahead


def horizon_weeks(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_HORIZON:
        raise ValueError(f"must be a whole number of weeks from 1 to {MAX_HORIZON}")
    return value


def store_count(text: str) -> int:
    from salesfc.data.synthetic import MAX_STORES

    value = int(text)
    if not 1 <= value <= MAX_STORES:
        raise ValueError(f"must be a whole number from 1 to {MAX_STORES:,}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be a whole number of at least 0")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be a number greater than 0")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError("must be a number of at least 0")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise ValueError("must be a number from 0 up to (not including) 1")
    return value


def layer_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError("must be comma-separated whole numbers, e.g. 256,128,64") from None
    if not sizes or any(size < 1 for size in sizes):
        raise ValueError("must be comma-separated whole numbers of at least 1, e.g. 256,128,64")
    return sizes


def switch(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0"):
        return False
    raise ValueError("must be true or false")


def quantity(text: str) -> str:
    # The Kubernetes resource quantity grammar, for the plain numbers and suffixes people write.
    import re

    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?", text):
        raise ValueError("must be a Kubernetes quantity, e.g. 4, 500m, 16Gi")
    return text


def run_id(text: str) -> str:
    # Run ids become directory names and Kubernetes object names: keep them to an RFC 1035 label.
    import re

    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", text):
        raise ValueError("must be lower-case letters, digits and '-', start and end with a letter or digit, "
                         "63 characters at most")
    return text


def http_url(text: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:8000")
    return text


def spark_master(text: str) -> str:
    import re

    if re.fullmatch(r"local(\[(\*|[1-9][0-9]*)\])?|spark://[A-Za-z0-9.-]+(:[0-9]+)?", text):
        return text
    raise ValueError("must be local, local[N], local[*] or spark://HOST:PORT (a Spark standalone master)")


@dataclass(frozen=True)
class Setting:
    name: str
    help: str
    default: Any = None
    type: Callable[[str], Any] = str
    choices: tuple[str, ...] = ()
    commands: tuple[str, ...] = ALL
    # A switch is given as a bare flag (--wait) or with a value (--wait false, SALESFC_WAIT=true).
    is_switch: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    def parse(self, text: str, origin: str) -> Any:
        if self.choices and text not in self.choices:
            raise SettingError(f"{origin}: {text!r} is not one of {', '.join(self.choices)}")
        try:
            return self.type(text)
        except ValueError as err:
            reason = str(err)
            if reason.startswith(("invalid literal", "could not convert")):  # int()/float()'s own wording
                reason = "must be a whole number" if "int()" in reason else "must be a number"
            raise SettingError(f"{origin}: {text!r} {reason}") from None


SETTINGS: tuple[Setting, ...] = (
    # Where things live.
    Setting("workdir", "Shared working directory: data/, feast/, models/<run-id>/ and reports/ live under it.",
            "salesfc-work"),
    Setting("feature_repo", "Feast feature repository (definitions.py and the feature_store*.yaml files). "
            "Default: the one installed with salesfc (the image's, or the checkout's feature_repo/)."),
    Setting("feature_store", "Feast configuration: 'local' (file registry, DuckDB offline store over parquet, "
            "SQLite online store; needs no server), 'postgres' (registry, offline and online store in PostgreSQL, "
            "see --pg-*), 'spark' (as 'local' with Feast's Spark offline store and materialization engine, Spark "
            "in local mode; needs Java 17), or the path of a feature_store.yaml.", "local"),
    Setting("pg_host", "PostgreSQL host for the 'postgres' feature store (and for any feature_store.yaml that "
            "uses ${SALESFC_PG_HOST}). The password comes from the environment variable SALESFC_PG_PASSWORD.",
            "localhost"),
    Setting("pg_port", "PostgreSQL port (see --pg-host).", 5432, positive_int),
    Setting("pg_database", "PostgreSQL database holding the registry and the stores.", "salesfc"),
    Setting("pg_user", "PostgreSQL user (its password: SALESFC_PG_PASSWORD).", "salesfc"),
    Setting("pg_sslmode", "PostgreSQL TLS mode (libpq sslmode).", "prefer",
            choices=("disable", "allow", "prefer", "require", "verify-ca", "verify-full")),
    Setting("spark_master", "Spark master of the 'spark' feature store (and of any feature_store.yaml that uses "
            "${SALESFC_SPARK_MASTER}): local[*] runs Spark inside this process; spark://HOST:PORT sends the reads "
            "to a Spark standalone cluster (the chart's featureStore.spark).", "local[*]", spark_master),
    Setting("spark_driver_host", "Address the executors of a Spark standalone cluster call this process's Spark "
            "driver back on (spark.driver.host, for a feature_store.yaml that uses ${SALESFC_SPARK_DRIVER_HOST}; the "
            "chart sets it to the pod's IP). Empty: Spark's own choice, this machine's address.", ""),
    Setting("wait_timeout", "Seconds to wait for this stage's inputs (database, prepared data, model) before "
            "failing; 0 checks once. launch: seconds to retry a TrainJob the Trainer's webhook denies for a runtime it "
            "has not seen yet.", 0.0, non_negative_float, commands=STAGES + LAUNCH),
    Setting("log_level", "Logging level of salesfc (libraries log warnings only).", "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
            commands=ALL + SUBMIT + LAUNCH),
    # prep
    Setting("source", "Raw data: 'synthetic' (generated, Walmart-shaped, knows its noise floor) or 'kaggle' "
            "(train.csv, features.csv, stores.csv from --kaggle-dir).", "synthetic",
            choices=("synthetic", "kaggle"), commands=PREP),
    Setting("kaggle_dir", "Folder with the Kaggle 'Walmart Recruiting - Store Sales Forecasting' CSVs "
            "(plain or .zip).", commands=PREP),
    Setting("size", "Synthetic data size: tiny (~5K rows, seconds), small (~50K rows) or full (~420K rows, "
            "the size of the real data).", "full", choices=("tiny", "small", "full"), commands=PREP),
    Setting("data_seed", "Seed of the synthetic data generator.", 7, int, commands=PREP),
    Setting("stores", "Synthetic data: number of stores (default: the size's, 45 at full size), with the size's "
            "departments; more than 45 makes a chain of new stores drawn like the first (e.g. 4,500 for a "
            "Walmart-sized chain, ~43M rows at full size).", None, store_count, commands=PREP),
    Setting("data_id", "A name for the data prep makes (prep records it in data/prep.json); train and infer wait "
            "until the prepared data carries it. The chart sets it from its data values, so a retrain after an "
            "upgrade never starts on the data of the release before.",
            commands=("prep", "train", "infer", "demo", "backtest")),
    # train / infer / check
    Setting("run_id", "Model run: models/<run-id>/ under the workdir. train: default a new id from the clock; "
            "infer and check: default the latest finished run; serve: default the latest finished run, followed as "
            "new runs finish; backtest: backtests/<run-id>/ (default a new id; "
            "an existing one resumes, keeping its finished folds); submit: the TrainJob's name and its model's run id "
            "(default train-<UTC time>).", type=run_id, commands=RUN + SUBMIT),
    Setting("epochs", "Maximum training epochs.", 40, positive_int, commands=TRAIN),
    Setting("batch_size", "Global batch size, split across all processes (smaller on small data, so that an "
            "epoch has at least 32 steps).", 4096, positive_int, commands=TRAIN),
    Setting("lr", "Peak learning rate (AdamW; linear warm-up for one epoch, then cosine decay).", 3e-3,
            positive_float, commands=TRAIN),
    Setting("weight_decay", "AdamW weight decay (L2 pull of the weights towards 0).", 1e-4, non_negative_float,
            commands=TRAIN),
    Setting("hidden", "MLP hidden layer sizes.", (256, 128, 64), layer_sizes, commands=TRAIN),
    Setting("quantiles", "Quantiles the network forecasts: P10/P50/P90 bands by default (pinball loss, never "
            "crossing); the median 0.5 is always one of them and is the point forecast (0.5 alone: no band).",
            (0.1, 0.5, 0.9),
            quantile_list, commands=TRAIN),
    Setting("horizon", "Weeks ahead the network forecasts from each origin: weeks t+1 to t+H, one output each (a "
            "direct multi-horizon head); 1 to 39. Sales features end at the origin; each target week's calendar (week "
            "of year, weeks to Thanksgiving and Christmas) is known ahead; the other store context (temperature, fuel "
            "price, CPI, unemployment, markdowns) is held at its value of the first forecast week.", 13, horizon_weeks,
            commands=TRAIN),
    Setting("dropout", "Dropout after each hidden layer.", 0.2, fraction, commands=TRAIN),
    Setting("huber_delta", "The median's training loss is Huber loss with this delta, in units of the row's scale: "
            "squared error for smaller errors, absolute error beyond. The default is nearly absolute error, what WMAE "
            "scores; a wider one learns from the size of each error too (bench/README.md has what 0.1 and 0.25 "
            "measured). Early stopping scores the default's loss whatever this is.", 0.02, positive_float,
            commands=TRAIN),
    Setting("embed_dim", "Size of the store and department embeddings.", 8, positive_int, commands=TRAIN),
    Setting("members", "Networks in the ensemble: trained side by side on the same batches from their own initial "
            "weights, averaged when forecasting (costs that many times the compute; steadier across seeds and about 1 percent lower "
            "backtest WMAE than one network, see bench/README.md).", 3,
            positive_int, commands=TRAIN),
    Setting("patience", "Early stopping: epochs without a better validation loss before stopping.", 6,
            positive_int, commands=TRAIN),
    Setting("grad_clip", "Gradient clipping: maximum global norm (0 turns it off).", 1.0, non_negative_float,
            commands=TRAIN),
    Setting("seed", "Training seed (weights, shuffling).", 0, int, commands=TRAIN),
    # 500K: at 10x the stores (4.3M rows), one read of 1.08M rows here took 10.3 s and 2.2 GiB above the process's
    # base, one of 481K 3.1 s and 0.9 GiB, one of 244K 1.9 s and 0.6 GiB (Feast's DuckDB join grows faster than
    # its rows; each read also pays about a second of set-up).
    Setting("rows_per_read", "Training set: label rows per Feast read. Each training process reads only its own "
            "series, in reads of about this many rows (a read's peak memory is several times its rows); backtest "
            "and infer's tree peer read the same way.", 500_000,
            positive_int, commands=TRAIN + INFER),
    Setting("val_weeks", "Weeks before the held-out test weeks used for early stopping.", 13, positive_int,
            commands=TRAIN),
    Setting("refit", "After early stopping has chosen the epoch on the validation weeks, train the model again from "
            "scratch on the training and validation weeks for that many epochs (on), or keep the early-stopped model "
            "(off). The validation weeks are the latest before the forecast ones; the tree peer follows the model's "
            "choice. On costs a second training.", "off", choices=("on", "off"), commands=TRAIN),
    Setting("test_weeks", "Final weeks held out from training and model selection; infer evaluates on them.",
            26, positive_int, commands=("train", "demo", "submit")),
    Setting("folds", "backtest: number of folds (rolling origins), consecutive and ending with the last week.", 4,
            positive_int, commands=("backtest",)),
    Setting("fold_weeks", "backtest: weeks per fold (4 x 13 covers the last year, so every holiday is in one "
            "fold).", 13, positive_int, commands=("backtest",)),
    Setting("device", "Training device: auto (CUDA when present), cpu or cuda.", "auto",
            choices=("auto", "cpu", "cuda"), commands=TRAIN),
    Setting("amp", "Mixed precision (bf16 autocast): auto (on for CUDA), on or off.", "auto",
            choices=("auto", "on", "off"), commands=TRAIN),
    Setting("nproc_per_node", "Training processes to start on this machine when not already under torchrun "
            "(the TrainJob sets its own through torchrun). Default: 1 for train, 2 for demo. submit: processes per "
            "node of the TrainJob (default: the Trainer's, one per GPU, or one per CPU of the node's limit).",
            type=positive_int, commands=("train", "demo", "submit")),
    Setting("plot_series", "How many series to plot (forecast against actual) in the report.", 6,
            non_negative_int, commands=INFER),
    Setting("level_correction", "Multiply the model's and the tree peer's forecasts by the ratio of actual to "
            "forecast sales of their next-week forecasts in the latest 8 weeks whose actuals were known when each was "
            "made, since the model was deployed (on: infer's held-out weeks and next week's forecast, which serve "
            "answers, and every backtest fold), or keep them as made (off). It follows a level that moves for every "
            "series after the training weeks (promotions that start, a trend); bench/README.md has what it measured.",
            "off", choices=("on", "off"), commands=INFER + ("backtest",)),
    # serve
    Setting("host", "serve: address to listen on (0.0.0.0 for every interface, as in a container).", "127.0.0.1",
            commands=SERVE),
    Setting("port", "serve: TCP port to listen on.", 8000, positive_int, commands=SERVE),
    Setting("workers", "serve: worker processes, each with its own model and database connections (on Kubernetes "
            "prefer replicas).", 1, positive_int, commands=SERVE),
    Setting("max_batch_rows", "serve: most rows one POST /predict may ask for; a larger request is refused with 422.",
            1000, positive_int, commands=SERVE),
    Setting("reload_interval", "serve: seconds between looks for a newer finished run (models/LATEST) or newly "
            "prepared data; a newer run is swapped in without a restart.", 10.0, positive_float, commands=SERVE),
    Setting("ready_timeout", "serve: seconds the online store has to answer the /readyz probe's read.", 2.0,
            positive_float, commands=SERVE),
    Setting("retry_after", "serve: seconds a 503 answer (database away, no model yet) tells clients to wait "
            "(Retry-After); the service also retries the database this often.", 5, positive_int, commands=SERVE),
    # submit
    Setting("runtime", "submit: the salesfc training runtime to train on, as `helm status <release>` names it: a "
            "TrainingRuntime in --namespace, else a ClusterTrainingRuntime of that name.", commands=SUBMIT),
    Setting("namespace", "submit: namespace of the TrainJob (default: the kubeconfig context's; KUBECONFIG "
            "picks the cluster). launch: the release's namespace.", commands=SUBMIT + LAUNCH),
    Setting("trainjob_configmap", "launch: the ConfigMap the chart renders the release's TrainJob into "
            "(<release>-salesfc-trainjob, key trainjob.yaml).", commands=LAUNCH),
    Setting("image", "submit: trainer image (default: the runtime's, i.e. the release's image).", commands=SUBMIT),
    Setting("num_nodes", "submit: training nodes (pods) (default: the runtime's).", type=positive_int,
            commands=SUBMIT),
    Setting("cpu", "submit: CPUs per node, requests and limits (e.g. 8 or 7500m; default: the runtime's).",
            type=quantity, commands=SUBMIT),
    Setting("memory", "submit: memory per node, requests and limits (e.g. 32Gi; default: the runtime's).",
            type=quantity, commands=SUBMIT),
    Setting("gpus", "submit: nvidia.com/gpu per node (default: the runtime's).", type=non_negative_int,
            commands=SUBMIT),
    Setting("wait", "submit: wait until the TrainJob completes, printing its progress; exit 1 when it fails.",
            False, switch, commands=SUBMIT, is_switch=True),
    Setting("follow", "submit: stream the logs of the first trainer node (rank 0) until it ends, then wait as "
            "--wait does.", False, switch, commands=SUBMIT, is_switch=True),
    Setting("job_timeout", "submit: seconds --wait and --follow wait for the TrainJob before giving up (the "
            "TrainJob goes on).", 21600, positive_int, commands=SUBMIT),
    Setting("max_wmae_ratio", "check: fail when the model's WMAE exceeds this multiple of the best naive "
            "baseline's WMAE on the held-out weeks.", 1.0, positive_float, commands=("check",)),
    Setting("serve_url", "check: base URL of the forecast service (salesfc serve), e.g. http://127.0.0.1:8000; "
            "when given, check also asks it POST /predict for a store department of the prepared data and wants "
            "status 200, a forecast and the checked run's id (waiting up to --wait-timeout for it).",
            type=http_url, commands=("check",)),
)

BY_NAME = {setting.name: setting for setting in SETTINGS}
ENV_NAMES = frozenset({setting.env for setting in SETTINGS} | {PASSWORD_ENV})


def for_command(command: str) -> tuple[Setting, ...]:
    return tuple(setting for setting in SETTINGS if command in setting.commands)


def add_to_parser(parser: argparse.ArgumentParser, command: str) -> None:
    """Add the command's settings as flags. Defaults are resolved later, so that --help shows the plain default."""
    for setting in for_command(command):
        shown = setting.default
        if isinstance(shown, tuple):
            shown = ",".join(str(part) for part in shown)
        default_text = "" if shown is None else f" Default: {shown}."
        choices_text = f" One of: {', '.join(setting.choices)}." if setting.choices else ""
        shape = {"nargs": "?", "const": "true", "metavar": "true|false"} if setting.is_switch else \
            {"metavar": setting.name.upper()}
        parser.add_argument(setting.flag, dest=setting.name, default=None, **shape,
                            help=f"{setting.help}{choices_text}{default_text} Env: {setting.env}.")


def resolve(namespace: argparse.Namespace, command: str, environ: os._Environ | dict | None = None) -> dict:
    """Flag, then environment, then default: returns {name: typed value} for the command's settings."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for setting in for_command(command):
        raw = getattr(namespace, setting.name, None)
        if raw is not None:
            values[setting.name] = setting.parse(raw, setting.flag)
        elif environ.get(setting.env, "") != "":
            values[setting.name] = setting.parse(environ[setting.env], f"{setting.env} (environment)")
        else:
            values[setting.name] = setting.default
    return values


def unknown_environment(environ: os._Environ | dict | None = None) -> list[str]:
    """SALESFC_* variables that no setting reads: almost always a typo in a chart or a shell profile."""
    environ = os.environ if environ is None else environ
    return sorted(name for name in environ if name.startswith(ENV_PREFIX) and name not in ENV_NAMES)


def password(environ: os._Environ | dict | None = None) -> str:
    environ = os.environ if environ is None else environ
    return environ.get(PASSWORD_ENV, "")


def as_text(value: Any) -> str:
    """A setting's value as its flag or variable takes it."""
    return ",".join(str(part) for part in value) if isinstance(value, tuple) else str(value)


def as_flags(values: dict, command: str) -> list[str]:
    """The flags that reproduce ``values`` for ``command``: how a launcher passes its settings to child processes."""
    flags: list[str] = []
    for setting in for_command(command):
        value = values.get(setting.name)
        if value is None:
            continue
        flags += [setting.flag, as_text(value)]
    return flags


def as_environment(values: dict, command: str) -> dict[str, str]:
    """The SALESFC_* variables that reproduce ``values`` for ``command``: how submit hands settings to a TrainJob."""
    return {setting.env: as_text(values[setting.name]) for setting in for_command(command)
            if values.get(setting.name) is not None}


def fail(message: str, code: int = 2):
    print(f"salesfc: error: {message}", file=sys.stderr)
    raise SystemExit(code)


class Config:
    """The resolved settings of one command, as attributes (``config.epochs``), plus what follows from them."""

    def __init__(self, command: str, values: dict):
        self.command = command
        self._values = dict(values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(f"setting {name!r} does not apply to 'salesfc {self.command}'") from None

    @classmethod
    def defaults(cls, command: str, **changes: Any) -> "Config":
        """The command's settings as if no flag or variable were given, with ``changes`` (for code calling stages)."""
        return cls(command, {**{s.name: s.default for s in for_command(command)}, **changes})

    def values(self) -> dict:
        return dict(self._values)

    def replace(self, **changes: Any) -> "Config":
        return Config(self.command, {**self._values, **changes})

    def for_command(self, command: str) -> "Config":
        """The same settings seen by another command (demo runs prep, train and infer with its own)."""
        return Config(command, {s.name: self._values.get(s.name, s.default) for s in for_command(command)})

    @property
    def workspace(self):
        from pathlib import Path

        from salesfc.workspace import Workspace

        return Workspace(Path(self._values["workdir"]).absolute())
