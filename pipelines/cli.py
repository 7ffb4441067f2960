"""``ssl-pipeline``: run the pipeline, schedule it, list the stages, run one stage, show a config.

``pipelines.config`` imports the stage modules (their config classes) and with them Keras: only the
commands that build a configuration import it, so ``--help``, ``report`` and ``deployments`` start
without it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
import threading
import time
from pathlib import Path

import yaml

from pipelines.launchers import LAUNCHERS
from pipelines.presets import DEFAULT_PRESET, PRESETS
from stages.lib.artifacts import file_lock
from stages.lib.errors import InvalidSetting, user_message
from stages.lib.seed_study import EXPERIMENTS
from stages.lib.stage import STAGE_NAMES, get_stage
from stages.lib.stage import main as stage_main


def _overrides_from(args: argparse.Namespace) -> tuple[list[dict], str]:
    """The overrides of ``--config``, ``--set`` and ``--data``, and where they come from (for errors)."""
    from pipelines.config import parse_assignment

    overrides, source = [], f"preset {args.preset}"
    if args.config:
        overrides.append(yaml.safe_load(args.config.read_text()) or {})
        source += f" + {args.config}"
    overrides += [parse_assignment(text) for text in args.set]
    if args.set:
        source += " + --set " + " ".join(args.set)
    if data_source := _data_argument(args)[0]:
        overrides.append({"split": {"data": {"source": data_source}}})
        source += f" + --data {args.data}"
    return overrides, source


def _data_argument(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """``--data NAME|PATH`` as (the source it names or its path holds, the path). A path that is not
    here is taken as it is where the flow runs (a deployment's container), its source from the config."""
    from stages.lib.sources import SOURCES, infer_source

    text = getattr(args, "data", None)
    if text is None or text in SOURCES:
        return text, None
    path = Path(text)
    if path.exists():
        return infer_source(path), text
    if args.handler in (command_deploy, command_serve):
        return None, text
    raise InvalidSetting(f"--data {text}: neither a source ({', '.join(SOURCES)}) nor an existing path; give a folder "
                     "(ROOT/labeled/<class>/...), a Parquet table or the CIFAR-100 archive")


def _config_from(args: argparse.Namespace):
    from pipelines.config import load_pipeline_config

    overrides, source = _overrides_from(args)
    return load_pipeline_config(args.preset, overrides, source)


def _add_config_arguments(parser: argparse.ArgumentParser, data: bool = True) -> None:
    parser.add_argument("--preset", choices=PRESETS, default=DEFAULT_PRESET, help="starting configuration")
    parser.add_argument("--config", type=Path, help="YAML file of overrides, e.g. {baseline: {epochs: 10}}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="one override, e.g. --set baseline.seed=1 (repeatable)")
    if not data:
        return
    parser.add_argument("--data", metavar="NAME|PATH",
                        help="cifar100 or cifar100-coarse, or the path of an image folder (ROOT/labeled/<class>/*, "
                             "ROOT/unlabeled/**, [ROOT/test/<class>/*]), a Parquet table (image, label[, split]) or the "
                             "CIFAR-100 archive (default: cifar100 from $CIFAR100_ARCHIVE or the download)")


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    _add_config_arguments(parser)
    parser.add_argument("--launcher", choices=list(LAUNCHERS), default="in-process",
                        help="how each stage is started (docker: the stage image, $SSL_PIPELINE_STAGE_IMAGE)")


def _add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Where a comparison's independent stages run side by side (default: one at a time, here)."""
    engine = parser.add_mutually_exclusive_group()
    engine.add_argument("--cluster", metavar="ADDRESS",
                        help="a running Dask scheduler, e.g. tcp://host:8786: its workers take the stages, each "
                             "through --launcher, all reading and writing $SSL_PIPELINE_STORE")
    engine.add_argument("--workers", type=int, metavar="N", help="a local Dask cluster of N single-threaded workers")


def _run_flow(flow_path: str, engine: argparse.Namespace | None = None, **parameters) -> tuple[dict, float]:
    """Run the flow at ``module:name`` in this process, its stages on the Dask cluster of ``engine``'s
    ``--cluster`` or ``--workers`` if given; its result and its minutes."""
    _prepare_prefect()
    server = _start_embedded_prefect_server()
    module, _, name = flow_path.partition(":")
    flow = getattr(importlib.import_module(module), name)  # seconds of imports, while the server boots
    if server:
        server.join()
    distributed = engine is not None and bool(engine.cluster or engine.workers)
    if distributed:
        from pipelines.engine import task_runner

        flow = flow.with_options(task_runner=task_runner(engine.cluster, engine.workers))
    started = time.perf_counter()
    # Dask workers are other processes: they reach the temporary server by the address in the settings
    # each task carries, where the flow's own process would find it without one
    with server.as_api() if server and distributed else contextlib.nullcontext():
        result = flow(**parameters)
    return result, (time.perf_counter() - started) / 60


def command_run(args: argparse.Namespace) -> int:
    if args.minutes is not None:
        args.set.append(f"budget.minutes={args.minutes}")
    config = _config_from(args)
    result, _ = _run_flow("pipelines.semi_supervised:semi_supervised_pipeline", config=config, launcher=args.launcher,
                          data=_data_argument(args)[1], started=args.started, supervised_only=args.supervised_only)
    print(f"\n{'':<12} {'test top-1':>10} {'val top-1':>10} {'minutes':>8}")
    for row in result["table"]:
        print(f"{row['method']:<12} {row['test_accuracy']:>10.2%} {row['val_accuracy']:>10.2%} {row['minutes']:>8.1f}")
    budget = f" of a {config.budget.minutes:g}-minute budget" if config.budget.minutes else ""
    from pipelines import settings, tracking

    uri = settings.tracking_uri()
    served = uri.startswith(("http://", "https://"))
    page = tracking.run_page(uri if served else "http://127.0.0.1:5000", result["experiment_id"], result["mlflow_run_id"])
    model = result["champion"] or result["artifacts"].get("ssl_model") or result["artifacts"]["supervised_model"]
    print(f"\n{config.preset} preset, {result['total_minutes']:.1f} min{budget}. The model: {model}\n"
          f"MLflow run {result['mlflow_run_id']}: " + (page if served else f"mlflow ui --backend-store-uri {uri}, then {page}"))
    return 0


def command_predict(args: argparse.Namespace) -> int:
    if args.csv:
        args.set.append("predict.csv=true")
    config = _config_from(args)
    result, minutes = _run_flow("pipelines.predict:predict_pipeline", model=args.model, images=args.images,
                                output=args.output, config=config, launcher=args.launcher)
    print(f"{result['images']} images, {result['classes_predicted']} classes predicted, in {minutes:.1f} min: "
          + ", ".join(result["outputs"]))
    return 0


def _prepare_prefect() -> None:
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "stages,pipelines")  # stage logs in task logs
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry from a local run
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")  # first start migrates its DB
    if "PREFECT_HOME" in os.environ:  # Prefect creates its home without parents, then cannot open its DB
        Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)


class EmbeddedServer(threading.Thread):
    """Prefect's temporary server, booting in a thread (its module takes seconds to import): ``join()``
    waits until it answers. Prefect keeps one per process, and the flow finds it."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.api_url = ""

    def as_api(self) -> contextlib.AbstractContextManager:
        """Prefect settings that name this server as the API, for the block."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        return temporary_settings({PREFECT_API_URL: self.api_url})

    def run(self) -> None:
        from prefect.server.api.server import SubprocessASGIServer
        from prefect.settings import get_current_settings

        # Servers of flows started together would migrate the same new database at once and fail:
        # each holds the lock until its server is up.
        with file_lock(Path(get_current_settings().home) / ".server-start.lock"):
            server = SubprocessASGIServer()
            server.start()
        self.api_url = server.api_url


def _start_embedded_prefect_server() -> EmbeddedServer | None:
    """With no ``PREFECT_API_URL``, boot Prefect's temporary server now, in a thread.

    The server is a subprocess that spends seconds importing; meanwhile this process imports
    MLflow and the flow.
    """
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        _check_prefect_server()
        return None
    server = EmbeddedServer()
    server.start()
    return server


def command_self_train(args: argparse.Namespace) -> int:
    from pipelines.config import sweep_grid

    config = _config_from(args)
    sweep_grid(config.self_training, args.thresholds, args.iterations)  # a bad grid fails before any server starts
    result, minutes = _run_flow("pipelines.self_training:self_training_pipeline", args, config=config,
                                thresholds=args.thresholds, iterations=args.iterations, launcher=args.launcher,
                                data=_data_argument(args)[1], start_model=args.start_model)
    print(f"\n{(Path(result['report']) / 'comparison.md').read_text()}\n"
          f"best on validation: threshold {result['best_threshold']}, {result['best_iterations']} iterations: "
          f"test top-1 {result['test_accuracy']:.2%} (baseline {result['baseline_test_accuracy']:.2%}) "
          f"({minutes:.1f} min). MLflow: tags.ssl.sweep = '{result['sweep']}'; report in {result['report']}")
    return 0


def command_pretrain(args: argparse.Namespace) -> int:
    from pipelines.config import pretraining_grid

    config = _config_from(args)
    pretraining_grid(config, args.objectives, args.modes)  # a bad grid fails before any server starts
    result, minutes = _run_flow("pipelines.pretraining:pretraining_pipeline", args, config=config,
                                objectives=args.objectives, modes=args.modes, launcher=args.launcher,
                                data=_data_argument(args)[1])
    return _print_comparison(result, minutes)


def _print_comparison(result: dict, minutes: float) -> int:
    """A comparison flow's table and its baseline."""
    import pandas as pd

    from stages.lib.reports import markdown_table  # imports Keras: only once there is something to show

    print(f"\n{markdown_table(pd.DataFrame(result['table']))}\nbaseline test top-1 "
          f"{result['baseline_test_accuracy']:.2%}; the flow took {minutes:.1f} min. MLflow run {result['mlflow_run_id']}")
    return 0


def command_consistency(args: argparse.Namespace) -> int:
    from pipelines.config import consistency_grid

    config = _config_from(args)
    consistency_grid(config.consistency, args.methods)  # a bad method fails before any server starts
    result, minutes = _run_flow("pipelines.consistency:consistency_pipeline", args, config=config, methods=args.methods,
                                launcher=args.launcher, data=_data_argument(args)[1], start_model=args.start_model)
    return _print_comparison(result, minutes)


def command_study(args: argparse.Namespace) -> int:
    from pipelines.config import study_grid, sweep_grid

    config = _config_from(args)
    study_grid(config, args.seeds, args.experiments, args.unlabeled)  # bad names fail before any server starts
    sweep_grid(config.self_training, args.thresholds, None)  # and bad thresholds
    result, minutes = _run_flow("pipelines.study:study_pipeline", args, config=config, seeds=args.seeds,
                                experiments=args.experiments, unlabeled=args.unlabeled, thresholds=args.thresholds,
                                launcher=args.launcher, data=_data_argument(args)[1])
    from pipelines.report import write_report

    report = write_report(result["study"], args.report)
    print(f"\nstudy {result['study']} ({minutes:.1f} min): report in {report}. "
          f"MLflow: tags.ssl.study = '{result['study']}'")
    return 0


def command_report(args: argparse.Namespace) -> int:
    from pipelines.report import write_report

    print(f"report in {write_report(args.study, args.output)}")
    return 0


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    return key, value


def _require_prefect_server() -> None:
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise InvalidSetting("deployments live on a Prefect server: set PREFECT_API_URL, e.g. "
                             "http://127.0.0.1:4200/api for the docker-compose stack")
    _check_prefect_server()


def _check_prefect_server() -> None:
    """Fail in seconds, with the fix, when the Prefect server of PREFECT_API_URL does not answer or
    refuses PREFECT_API_AUTH_STRING; Prefect's client would retry, then end in a traceback."""
    import requests
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

    api = PREFECT_API_URL.value().rstrip("/")
    secret = PREFECT_API_AUTH_STRING.value()  # the text itself: Setting.value() reveals a secret
    credentials = tuple(secret.split(":", 1)) if secret else None
    try:
        response = requests.get(f"{api}/admin/version", auth=credentials, timeout=10)
    except requests.RequestException as error:
        raise InvalidSetting(f"the Prefect server at {api} (PREFECT_API_URL) does not answer ({error}): start it "
                             "(docker compose up -d prefect-server), or unset PREFECT_API_URL for a temporary "
                             "server of this command's own") from None
    if response.status_code == 401:
        given = "PREFECT_API_AUTH_STRING" if secret else "a client without credentials"
        raise InvalidSetting(f"the Prefect server at {api} refused {given} (HTTP 401): set PREFECT_API_AUTH_STRING "
                             "to its user:password (the docker-compose stack's is in its .env)")


def command_deploy(args: argparse.Namespace) -> int:
    _require_prefect_server()
    from pipelines import deployments

    config = _config_from(args)
    if args.pool_type == "docker":
        job_variables = deployments.container_job_variables(args.network, args.volume, dict(args.env),
                                                            config.resources)
    else:  # the worker's own environment and devices
        job_variables = {"env": dict(args.env)}
    deployment_id = deployments.deploy(args.name, config, pool=args.pool, pool_type=args.pool_type,
                                       image=args.image, cron=args.cron, job_variables=job_variables,
                                       data=_data_argument(args)[1], paused=args.paused)
    schedule = f"on cron {args.cron!r}" if args.cron else "on demand"
    where = f"image {args.image}" if args.pool_type == "docker" else "in the worker's environment"
    print(f"deployment {deployments.full_name(args.name)} ({deployment_id}): {config.preset} preset, "
          f"{schedule}, {args.pool_type} work pool {args.pool}, {where}")
    return 0


def command_serve(args: argparse.Namespace) -> int:
    from pipelines import deployments

    deployments.serve(args.name, _config_from(args), cron=args.cron, data=_data_argument(args)[1])
    return 0


def command_deployments(args: argparse.Namespace) -> int:
    _require_prefect_server()
    from pipelines import deployments

    if args.action == "list":
        for row in deployments.list_deployments():
            state = "paused" if row["paused"] else "active"
            print(f"{row['name']:<40} {state:<7} {row['schedules'] or 'on demand':<16} {row['work_pool']}")
    elif args.action in ("pause", "resume"):
        deployments.set_paused(args.name, args.action == "pause")
        print(f"{deployments.full_name(args.name)}: {args.action}d")
    else:
        run_id, state = deployments.trigger(args.name, wait=args.wait)
        print(f"flow run {run_id}: {state}")
        return 0 if state in ("Completed", "Scheduled", "Pending") else 1
    return 0


def _add_deploy_commands(commands) -> None:
    deploy = commands.add_parser("deploy", help="register the pipeline as a Prefect deployment on a work pool")
    deploy.add_argument("name", help="deployment name")
    _add_config_arguments(deploy)
    deploy.add_argument("--cron", help='schedule, e.g. "0 3 * * *" (default: runs only when triggered)')
    deploy.add_argument("--pool", default="ssl-docker", help="work pool (created if missing)")
    deploy.add_argument("--pool-type", choices=["docker", "process"], default="docker",
                        help="docker: each run in a container of --image; process: in the worker's environment "
                             "(the compose GPU worker's pool, ssl-gpu)")
    deploy.add_argument("--image", default="ssl-pipeline/stage:cpu", help="image each flow run starts in (docker)")
    deploy.add_argument("--network", help="docker network of the flow-run containers, e.g. ssl-pipeline_default")
    deploy.add_argument("--volume", action="append", default=[], metavar="SOURCE:TARGET[:MODE]",
                        help="mount into flow-run containers, e.g. ssl-pipeline_artifacts:/data (repeatable)")
    deploy.add_argument("--env", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                        help="environment of flow runs, e.g. MLFLOW_TRACKING_URI=http://mlflow:5000")
    deploy.add_argument("--paused", action="store_true", help="register with the schedule paused")
    deploy.set_defaults(handler=command_deploy)
    serve = commands.add_parser("serve", help="run a schedule of the pipeline in this process (no worker)")
    serve.add_argument("name", help="deployment name")
    _add_config_arguments(serve)
    serve.add_argument("--cron", help="schedule (default: runs only when triggered)")
    serve.set_defaults(handler=command_serve)
    manage = commands.add_parser("deployments", help="list, pause, resume or trigger deployments")
    actions = manage.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every deployment with its schedule and state")
    for action in ("pause", "resume", "run"):
        parser = actions.add_parser(action, help=f"{action} a deployment (NAME or FLOW/NAME)")
        parser.add_argument("name")
    actions.choices["run"].add_argument("--wait", action="store_true", help="wait for the run to finish")
    manage.set_defaults(handler=command_deployments)


def command_sweep(args: argparse.Namespace) -> int:
    """Mark FAILED the MLflow runs of flows that died, once or every ``--every`` seconds (a service beside
    the servers: dead flows' runs end FAILED even when no flow starts after them)."""
    import mlflow

    from pipelines import settings, tracking

    uri = settings.tracking_uri()
    tracking.check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    print(f"sweeping {uri}: runs whose flow sent no heartbeat for {settings.heartbeat_timeout():g} s end FAILED"
          + (f", every {args.every:g} s" if args.every else ""), flush=True)
    while True:
        try:
            if failed := tracking.sweep_dead_flows_runs():
                print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {failed} run(s) of dead flows marked FAILED", flush=True)
        except Exception as error:
            if not args.every:
                raise
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} sweep failed, trying again: {error}", flush=True)
        if not args.every:
            return 0
        time.sleep(args.every)


def command_stages(args: argparse.Namespace) -> int:
    for name in STAGE_NAMES:
        stage = get_stage(name)
        print(f"{name:<13} inputs: {stage.describe_inputs():<28} {stage.summary}")
    return 0


def command_config(args: argparse.Namespace) -> int:
    """The resolved configuration as YAML, after a comment line per section that inherits another."""
    from pipelines.config import resolve_pipeline_config

    config, taken = resolve_pipeline_config(args.preset, *_overrides_from(args))
    for target, (source, own) in taken.items():
        print(f"# {target}: inherits {source}" + (f", then sets {', '.join(own)}" if own else ""))
    if config.budget.minutes:
        print(f"# baseline.time_budget_minutes, consistency.classifier.time_budget_minutes: `ssl-pipeline run` plans "
              f"them from budget ({config.budget.minutes:g} minutes)")
    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    started = time.time()  # what a budget counts from
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["stage"]:  # the stage's own command line, unchanged
        if len(argv) < 2 or argv[1] not in STAGE_NAMES:
            print(f"usage: ssl-pipeline stage {{{','.join(STAGE_NAMES)}}} --output DIR ...", file=sys.stderr)
            return 2
        return stage_main(get_stage(argv[1]), argv[2:])
    parser = argparse.ArgumentParser(prog="ssl-pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="the main job: split -> baseline -> the preset's SSL method -> evaluate, "
                                          "within a wall-clock budget")
    _add_run_arguments(run)
    run.add_argument("--minutes", type=float, help="wall-clock budget from this command's start (default: budget.minutes)")
    run.add_argument("--supervised-only", action="store_true",
                     help="the baseline alone, given the whole budget (what the SSL method is compared with)")
    run.set_defaults(handler=command_run, started=started)
    self_train = commands.add_parser(
        "self-train", help="self-training over a grid of thresholds x iterations, with a comparison report")
    _add_run_arguments(self_train)
    _add_engine_arguments(self_train)
    self_train.add_argument("--thresholds", type=float, nargs="+", metavar="T",
                            help="confidence thresholds (default: self_training.selection.threshold)")
    self_train.add_argument("--iterations", type=int, nargs="+", metavar="N",
                            help="iteration counts (default: self_training.iterations)")
    self_train.add_argument("--start-model", metavar="DIR",
                            help="a finished baseline artifact to start from instead of training one")
    self_train.set_defaults(handler=command_self_train)
    pretraining = commands.add_parser(
        "pretrain", help="pretrain the encoder (autoencoder, SimCLR), fine-tune it two-step or jointly, evaluate")
    _add_run_arguments(pretraining)
    _add_engine_arguments(pretraining)
    pretraining.add_argument("--objectives", nargs="+", metavar="NAME", help="autoencoder, simclr (default: pretrain.objective)")
    pretraining.add_argument("--modes", nargs="+", metavar="MODE", help="two_step, joint (default: fine_tune.mode)")
    pretraining.set_defaults(handler=command_pretrain)
    consistency = commands.add_parser(
        "consistency", help="FixMatch-family consistency training (from the baseline or from scratch), evaluate, compare")
    _add_run_arguments(consistency)
    _add_engine_arguments(consistency)
    consistency.add_argument("--methods", nargs="+", metavar="NAME", help="fixmatch, freematch (default: consistency.method)")
    consistency.add_argument("--start-model", metavar="DIR",
                             help="a finished baseline artifact to start from instead of training one")
    consistency.set_defaults(handler=command_consistency)
    study = commands.add_parser("study", help="the seed study's experiments on all and filtered unlabeled data, and its report")
    _add_run_arguments(study)
    _add_engine_arguments(study)
    study.add_argument("--seeds", type=int, nargs="+", metavar="N", help="training seeds (default: baseline.seed)")
    study.add_argument("--experiments", nargs="+", metavar="NAME", help=f"of {', '.join(EXPERIMENTS)} (default: all)")
    study.add_argument("--unlabeled", nargs="+", metavar="SET", help="all, filtered (default: both)")
    study.add_argument("--thresholds", type=float, nargs="+", metavar="T",
                       help="self-training's confidence thresholds, one run each (default: self_training.selection.threshold)")
    study.add_argument("--report", type=Path, metavar="DIR", help="where the report goes (default: $SSL_PIPELINE_HOME/reports/STUDY)")
    study.set_defaults(handler=command_study)
    report = commands.add_parser("report", help="write a study's report from its MLflow runs")
    report.add_argument("study", help="the study name (the runs' ssl.study tag)")
    report.add_argument("--output", type=Path, metavar="DIR", help="default: $SSL_PIPELINE_HOME/reports/STUDY")
    report.set_defaults(handler=command_report)
    predict = commands.add_parser("predict", help="label new images with a trained classifier: class, probability, top 5")
    _add_config_arguments(predict, data=False)
    predict.add_argument("--model", required=True, metavar="DIR|models:/NAME@ALIAS",
                         help="a classifier artifact, or a registered version, e.g. models:/ssl-pipeline-classifier@champion")
    predict.add_argument("--images", required=True, metavar="DIR|TABLE",
                         help="a folder of image files, or a Parquet table with an 'image' column (bytes or paths)")
    predict.add_argument("--output", required=True, help="the Parquet file of predictions to write")
    predict.add_argument("--csv", action="store_true", help="also write the predictions as CSV beside it")
    predict.add_argument("--launcher", choices=list(LAUNCHERS), default="in-process", help="how the stage is started")
    predict.set_defaults(handler=command_predict)
    _add_deploy_commands(commands)
    sweep = commands.add_parser("sweep", help="mark FAILED the MLflow runs of flows whose heartbeat stopped")
    sweep.add_argument("--every", type=float, metavar="SECONDS", help="sweep again every SECONDS (default: once)")
    sweep.set_defaults(handler=command_sweep)
    commands.add_parser("stages", help="list the stages").set_defaults(handler=command_stages)
    commands.add_parser("stage", help="run one stage: ssl-pipeline stage NAME --help")
    show = commands.add_parser("config", help="print the resolved configuration")
    _add_config_arguments(show)
    show.set_defaults(handler=command_config)
    args = parser.parse_args(argv)
    # pipelines.flow sets our own loggers to INFO, for the CLI and for flows a worker runs alike
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(without_failure_reports)
    try:
        return args.handler(args)
    except Exception as error:
        if (message := user_message(error)) is None:
            raise  # a bug: its traceback
        print(f"error: {message}", file=sys.stderr)
        return 2


def without_failure_reports(record: logging.LogRecord) -> bool:
    """Drops Prefect's reports of a failed flow or task run (the state, the traceback) from this console:
    the command ends with the error itself, once. The Prefect API still gets them."""
    if not record.name.startswith(("prefect.flow_runs", "prefect.task_runs")):
        return True
    # a flow's final state comes at INFO whatever it is
    return record.levelno < logging.ERROR and not record.getMessage().startswith("Finished in state Failed(")


if __name__ == "__main__":
    sys.exit(main())
