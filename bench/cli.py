"""The ``bench`` command: argument parsing only; the work is in bench.api and friends.

Exit codes: 0 ok, 1 some units failed, 2 usage error (any BenchError), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from typing import Any

from bench.errors import BenchError, UsageError
from bench.options import parse_fields, parse_owned_fields
from bench.suites import BUILTIN_SUITES

log = logging.getLogger("bench")


#: The summary line of the recording stage (bench.runner.RunResult.recording).
RECORDING_TEXT = {
    "computed": "computed",
    "cached": "from cache",
    "none": "none (no method of the run reads evidence)",
}

EXAMPLES = """examples:
  bench run                                  every method on the synthetic world, scored,
                                             with a leaderboard page (offline, minutes)
  bench run --methods netdissect,milan --units 0-9
  bench run --target resnet50 --probe broden --probe-root ~/data/broden1_224 \\
            --layers layer4 --units 0-31 --methods netdissect,compexp
  bench run --target resnet18 --weights my_resnet18.pth --probe broden --download
  bench score --labels tally_layer4.csv --target resnet50 --suite final-layer
  bench list methods | targets | probes | suites
  bench cache ls                             what the cache holds (bench cache clear empties it)

'bench COMMAND --help' lists a command's options.
"""


def _csv(value: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list of names")
    return items


def _config_items(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--config METHOD.FIELD=VALUE`` items -> per-method overrides (VALUE parsed as JSON)."""
    return parse_owned_fields(items, "--config", "METHOD")


def _suite_options(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--suite-option SUITE.FIELD=VALUE`` items -> per-suite config fields."""
    return parse_owned_fields(items, "--suite-option", "SUITE")


def _add_scoring_args(p: argparse.ArgumentParser) -> None:
    """Options shared by `bench run` (scoring after the methods) and `bench score`."""
    p.add_argument(
        "--suite-option",
        action="append",
        default=[],
        metavar="SUITE.FIELD=VALUE",
        help="a suite's config field (repeatable; VALUE parsed as JSON), e.g. "
        "milannotations.protocol=dnd, final-layer.class_names=synonyms, cifar-auroc.layer=layer4",
    )
    p.add_argument(
        "--text-models",
        choices=["offline", "papers"],
        default="offline",
        help="text models that score labels: offline (the packaged all-MiniLM-L6-v2; not "
        "comparable with the papers) or papers (roberta-large BERTScore, all-mpnet-base-v2, "
        "CLIP ViT-B/16; downloaded on first use) (default: offline)",
    )
    p.add_argument(
        "--no-baseline",
        action="store_true",
        help="do not score the constant 'depictions' label beside the methods",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=10_000,
        metavar="N",
        help="bootstrap resamples for the 95%% intervals and significance groups (default 10000)",
    )


def _score_options(args: argparse.Namespace, *, download: bool) -> Any:
    from bench.api import ScoreOptions

    return ScoreOptions(
        text=args.text_models,
        baseline=not args.no_baseline,
        n_resamples=args.bootstrap,
        seed=getattr(args, "seed", 0) or 0,
        device=getattr(args, "device", "auto"),
        download=download,
        cache_dir=getattr(args, "cache_dir", None),
        progress=not getattr(args, "no_progress", False) and sys.stderr.isatty(),
    )


def _print_report(report: Any) -> None:
    for suite, path in report.results.items():
        print(f"suite {suite:<16} {path}")
    for suite, reason in report.skipped.items():
        print(f"suite {suite:<16} skipped: {reason}")


def _print_scores(report: Any) -> None:
    """Each suite's headline metric (its first available one) per method: mean, interval,
    significance group; ``*`` marks the best group."""
    from bench.results import read_suite_result

    for suite, path in report.results.items():
        result = read_suite_result(path)
        metric = next((m for m in result.metrics if m.status == "ok" and m.per_method), None)
        if metric is None:
            print(f"\n{suite}: no metric could be computed here (see {path})")
            continue
        better = "higher" if metric.higher_is_better else "lower"
        pct = round(100 * metric.confidence)
        print(f"\n{suite}: {metric.name} ({better} is better; mean and {pct}% interval)")
        if metric.note or result.offline_note:
            print(f"  note: {metric.note or result.offline_note}")
        rows = sorted(
            metric.per_method.items(),
            key=lambda kv: (kv[1].group or 10**9, -kv[1].mean if metric.higher_is_better
                            else kv[1].mean),
        )  # fmt: skip
        for name, sc in rows:
            best = "*" if sc.group == 1 else " "
            group = f"group {sc.group}" if sc.group is not None else ""
            print(
                f"  {best} {name:<22} {sc.mean:>8.3f}  [{sc.ci_low:.3f}, {sc.ci_high:.3f}]  "
                f"n={sc.n:<5} {group}"
            )
    if report.results:
        print("\n* best group: the best method and those not significantly worse than it")
    elif report.skipped:
        print(
            "\nNo suite could score this run here. Each would apply with what its line above "
            "says (weights, data, text models: --download, --text-models papers, --suite-option)."
        )


def _first_sentence(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph, without reST markup."""
    import re

    para = (doc or "").strip().split("\n\n")[0]
    text = " ".join(line.strip() for line in para.splitlines())
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text)  # :class:`X` -> X
    text = text.replace("``", "").replace("**", "")
    text = re.sub(r"\s*\((?:see )?(?:the )?module docstring[^)]*\)", "", text)
    m = re.search(r"(?<!e\.g)(?<!i\.e)(?<!\bvs)\.(\s|$)", text)
    return text[: m.start() + 1] if m else text


def _probe_options(items: Sequence[str]) -> dict[str, str]:
    """``["categories=object,part", "max_images=100"]`` -> ``{"categories": "object,part", ...}``
    (values stay text: the probe set's factory says how to parse them)."""
    return parse_fields(items, "--probe-option", text=True, shape="KEY=VALUE")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench",
        description="Compare methods that label the units of vision networks with text.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    p.add_argument("--version", action="version", version=_version())
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="-v: also INFO messages and the libraries' progress bars; -vv: DEBUG too",
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="only warnings and errors (the default; overrides -v)",
    )
    p.add_argument(
        "--cache-dir",
        dest="global_cache_dir",
        metavar="DIR|URL",
        help="cache for every command (stage caches, datasets, exports, downloaded models; "
        "default: $BENCH_CACHE_DIR or ~/.cache/neuron-bench): a directory, or an fsspec URL "
        "(s3://bucket/cache with s3fs installed, gs://..., file:///...) whose entries are "
        "mirrored through a node-local staging directory ($BENCH_CACHE_STAGING); a command's "
        "own --cache-dir wins",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser(
        "run",
        help="describe units of a target with methods (default: the "
        "synthetic world, every method, offline)",
    )
    r.add_argument("--methods", type=_csv, help="comma-separated method names (default: all)")
    r.add_argument("--target", default=None, help="target network (default: synth.resnet)")
    r.add_argument("--weights", help="local weights file for the target (weights_only load)")
    r.add_argument(
        "--layers", type=_csv, help="comma-separated layer names (default: the target's)"
    )
    r.add_argument(
        "--probe",
        help="probe set: synthetic, broden, imagenet-val, cifar10, cifar100 "
        "(default: synthetic for synthetic targets, broden otherwise)",
    )
    r.add_argument("--probe-root", help="directory of the probe set (a Broden or ImageFolder copy)")
    r.add_argument(
        "--probe-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="option of the probe set (repeatable), e.g. categories=object,part,material or "
        "max_images=1000; broden defaults to NetDissect's categories object,part,scene,texture,"
        "color",
    )
    r.add_argument(
        "--download",
        action="store_true",
        help="download the probe set if it is missing (never done silently)",
    )
    r.add_argument(
        "--units",
        help="units to describe, e.g. '0-9,15' or 'layer4:0-9' (0-based; default: all); only "
        "these are recorded",
    )
    r.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    r.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of every random choice of the methods and suites (default: 0)",
    )
    r.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="images per forward pass while recording; changes speed and memory, not results "
        "(default: 64)",
    )
    r.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="METHOD.FIELD=VALUE",
        help="override a method's config field (repeatable; VALUE parsed as JSON)",
    )
    r.add_argument(
        "--component",
        action="append",
        default=[],
        metavar="KIND=BACKEND",
        help="component backend, e.g. captioner=blip, language_model=openai (repeatable)",
    )
    r.add_argument(
        "--component-option",
        action="append",
        default=[],
        metavar="KIND.OPTION=VALUE",
        help="a component backend's option, e.g. language_model.model=llama3 (repeatable)",
    )
    r.add_argument("--out", help="run directory (default: results/<target>-<probe>-<run id>)")
    r.add_argument(
        "--cache-dir",
        metavar="DIR|URL",
        help="cache directory, or an fsspec URL every node reaches (s3://..., gs://..., "
        "file:///...; see `bench --help`) (default: $BENCH_CACHE_DIR or ~/.cache/neuron-bench)",
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="where the methods' shards run: local (this process, or --workers processes) or "
        "ray (a Ray cluster; pip install 'neuron-bench[ray]') (default: local)",
    )
    r.add_argument(
        "--address",
        help="Ray cluster to use with --executor ray: auto (the one 'ray start' began on this "
        "machine) or HOST:PORT (default: start a private local Ray)",
    )
    r.add_argument(
        "--workers",
        type=int,
        help="local: worker processes (default: 1, in this process); ray: actors per method "
        "that holds models (default: as many as the cluster's resources fit)",
    )
    r.add_argument(
        "--resource-wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="ray: when no node of the cluster offers what a method's shards need (a GPU, a GPU "
        "memory class), wait this long for an autoscaler to add one instead of failing at once "
        "(default: 0)",
    )
    r.add_argument(
        "--leaderboard",
        metavar="DIR",
        help="where to build the leaderboard site of this run after scoring (default: "
        "leaderboard/ beside the run directory, e.g. results/leaderboard)",
    )
    r.add_argument(
        "--no-leaderboard", action="store_true", help="do not build the leaderboard site"
    )
    r.add_argument(
        "--suites",
        type=_csv,
        help="suites that score the run after the methods (default: every suite that applies "
        "to the target; one that cannot run here is skipped and said so)",
    )
    r.add_argument("--no-suites", action="store_true", help="describe only; score nothing")
    r.add_argument(
        "--metrics-check",
        action="store_true",
        help="after scoring, also run 'bench metrics check' on the target (synthetic targets): "
        "the metric report card goes to metrics/<target>/suites/sanity.json beside the run "
        "directory and into the leaderboard, which marks the columns of metrics that fail",
    )
    _add_scoring_args(r)

    sc = sub.add_parser(
        "score",
        help="score labels written by another tool (or re-score a run directory)",
        description="Score a label file of another tool as a named method, loading only what "
        "the suite needs (final-layer and milannotations need text alone), or re-score a run "
        "directory with --run.",
    )
    sc.add_argument(
        "--labels",
        nargs="+",
        action="extend",
        metavar="FILE",
        help="label file(s) or glob pattern(s) (formats: bench.imports.FORMATS); several files "
        "(e.g. DnD's per-layer '..._layer1.csv' ... '..._layer4.csv') are one method and one "
        "result, each file's layer from its layer column, --layer, or its name ('_layer3')",
    )
    sc.add_argument(
        "--format",
        default="auto",
        help="netdissect-lite, netdissect, compexp, milan, clip-dissect, dnd (default: auto)",
    )
    sc.add_argument("--target", help="target the labels describe, e.g. resnet50")
    sc.add_argument(
        "--suite",
        help=f"{', '.join(BUILTIN_SUITES)} or a plug-in's suite (with --run: comma-separated; "
        "default all that apply)",
    )
    sc.add_argument(
        "--layer",
        help="layer of files without a layer column (NetDissect, compexp, DnD) whose name "
        "does not state it ('_layer3', '_fc'); final-layer defaults to the target's final layer",
    )
    sc.add_argument("--name", help="method name in the results (default: the format's name)")
    sc.add_argument(
        "--annotations",
        help="milannotations: a local annotations.csv (layer,unit,summary) to score against",
    )
    sc.add_argument("--weights", help="local weights file of the target (cifar-auroc)")
    sc.add_argument("--run", help="re-score this run directory instead of a label file")
    sc.add_argument("--out", help="result directory (default: results/<target>-import-<name>-<id>)")
    sc.add_argument(
        "--download",
        action="store_true",
        help="fetch data the suite needs (MILANNOTATIONS, CIFAR, synonym lines); never silently",
    )
    sc.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    sc.add_argument("--cache-dir")
    sc.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_scoring_args(sc)

    ls = sub.add_parser("list", help="list registered methods, targets, probe sets or suites")
    ls.add_argument("what", choices=["methods", "targets", "probes", "suites"])

    c = sub.add_parser("cache", help="inspect or clear the cache")
    c.add_argument("action", choices=["ls", "clear"])
    c.add_argument("--stage", help="only this stage (record, describe, ...)")
    c.add_argument("--cache-dir", metavar="DIR|URL")

    d = sub.add_parser("data", help="list or download the datasets probe sets read")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    dl = dsub.add_parser("list", help="each dataset, its download size, and whether it is here")
    dl.add_argument("--dest", help="directory to look in (default: the cache's datasets/)")
    dl.add_argument("--cache-dir")
    df = dsub.add_parser(
        "fetch",
        help="download and unpack a dataset (skipped when already there); prints the "
        "directory to pass as --probe-root",
    )
    df.add_argument("name", help="dataset name (see 'bench data list')")
    df.add_argument("--dest", help="directory to unpack into (default: the cache's datasets/)")
    df.add_argument("--cache-dir")

    s = sub.add_parser("synth", help="the synthetic world: train or report its targets")
    s.add_argument("action", choices=["train", "report"])
    s.add_argument("--target", help="one synthetic target (default: all)")
    s.add_argument("--seed", type=int, help="training seed (default: the target card's)")
    s.add_argument("--out", help="output directory for trained weights (default: the package's)")
    lb = sub.add_parser("leaderboard", help="build the static leaderboard site from suite results")
    lb.add_argument(
        "results",
        nargs="+",
        metavar="RESULTS",
        help="suite result files, run directories, or folders of runs",
    )
    lb.add_argument("--out", required=True, metavar="DIR", help="directory for the site")

    mc = sub.add_parser(
        "metrics",
        help="put every faithfulness metric through NeuronEval's sanity tests on units whose "
        "truth is known (planted units, final-layer classes)",
    )
    mc.add_argument("action", choices=["check"])
    mc.add_argument("--target", help="one target (default: every synthetic target)")
    mc.add_argument("--n-images", type=int, help="images of the synthetic probe (default: all)")
    mc.add_argument("--seed", type=int, default=0, help="seed of the perturbations")
    mc.add_argument(
        "--text-suites",
        help="suites whose text metrics go through the permutation and constant tests, "
        "comma-separated (default: milannotations,final-layer,planted; '' for none)",
    )
    mc.add_argument(
        "--rows",
        help="the other suites' metrics tested, comma-separated among generated, "
        "identification, recovered, cifar-auroc (default: all; '' for none)",
    )
    mc.add_argument(
        "--annotations",
        metavar="CSV",
        help="annotations.csv (layer,unit,summary) for the milannotations text tests "
        "(default: the target's own; synthetic targets: their simulated annotators)",
    )
    mc.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    mc.add_argument(
        "--out", default="results/metrics", help="report cards go to OUT/<target>/suites/"
    )
    mc.add_argument("--cache-dir")

    mi = sub.add_parser(
        "milan", help="train MILAN on MILANNOTATIONS keys; run its generalisation splits"
    )
    mi.add_argument("action", choices=["train", "evaluate"])
    mi.add_argument(
        "--keys",
        help="keys or groupings, comma-separated: 'base', 'not-alexnet-imagenet', 'synthetic', "
        "'synth.convnet/synthetic' (train default: synthetic; evaluate default: the paper's pool)",
    )
    mi.add_argument("--hold-out", help="keys or groupings to leave out of training (train)")
    mi.add_argument(
        "--experiment",
        default="leave-one-out",
        help="within, across-network, across-dataset, across-task, across-arch, leave-one-out "
        "(evaluate; default: leave-one-out)",
    )
    mi.add_argument(
        "--root", help="MILANNOTATIONS directory (default: $MILAN_DATA_DIR or the cache)"
    )
    mi.add_argument("--download", action="store_true", help="download missing MILANNOTATIONS keys")
    mi.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a MILAN config field, e.g. max_epochs=5 (repeatable; VALUE parsed as JSON)",
    )
    mi.add_argument("--seed", type=int, default=0)
    mi.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    mi.add_argument("--out", help="train: directory for the model (safetensors + JSON)")
    mi.add_argument("--cache-dir")
    for command in sub.choices.values():  # -v also after the command name: `bench run -v`
        command.add_argument(
            "-v",
            "--verbose",
            action="count",
            default=argparse.SUPPRESS,
            help="-v: also INFO messages and the libraries' progress bars; -vv: DEBUG too",
        )
    return p


def _version() -> str:
    from bench import __version__

    return f"bench {__version__}"


def configure_logging(*, verbose: int) -> None:
    """The one place that configures logging: warnings and errors by default, INFO with ``-v``,
    DEBUG with ``-vv`` (or ``--debug``). Below ``-v`` the libraries' own progress bars
    (huggingface_hub downloads, transformers' "Loading weights"; sentence-transformers shows its
    bars only at INFO) are silenced, through the environment before those libraries load."""
    level = logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else logging.WARNING
    logging.basicConfig(
        level=level, format="%(levelname).1s %(name)s: %(message)s", stream=sys.stderr
    )
    if verbose < 1:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        if "huggingface_hub" in sys.modules:  # already imported: tell it directly
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()
        if "transformers" in sys.modules:
            import transformers

            transformers.utils.logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(verbose=2 if args.debug else 0 if args.quiet else args.verbose)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return _dispatch(args)
    except BenchError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    except OSError as e:
        # The file system refused (read-only, full, a file where a directory belongs): the
        # user's situation, not a bug: say which file and what to do, no traceback.
        if args.debug:
            raise
        from bench.errors import storage_error

        err = storage_error(e)
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code


def _dispatch(args: argparse.Namespace) -> int:
    if getattr(args, "global_cache_dir", None) and not getattr(args, "cache_dir", None):
        args.cache_dir = args.global_cache_dir
    _keep_library_caches_in(getattr(args, "cache_dir", None))
    if args.command == "run":
        with ExitStack() as hold:  # the run directory stays locked through scoring
            return _cmd_run(args, hold)
    if args.command == "score":
        return _cmd_score(args)
    if args.command == "list":
        return _cmd_list(args.what)
    if args.command == "cache":
        return _cmd_cache(args)
    if args.command == "synth":
        return _cmd_synth(args)
    if args.command == "data":
        return _cmd_data(args)
    if args.command == "leaderboard":
        return _cmd_leaderboard(args)
    if args.command == "milan":
        return _cmd_milan(args)
    if args.command == "metrics":
        return _cmd_metrics(args)
    raise UsageError(f"Unknown command '{args.command}'.")


def _keep_library_caches_in(cache_dir: str | None) -> None:
    """Third-party libraries on the scoring path keep caches of their own (matplotlib's font
    list, imported by bert-score): the command line points them into the bench cache unless
    the user set their own, so a command writes nothing outside its cache and output."""
    import os

    from bench.cache import Cache

    os.environ.setdefault("MPLCONFIGDIR", str(Cache(cache_dir).root / "matplotlib"))


def _cmd_run(args: argparse.Namespace, hold: ExitStack) -> int:
    from bench.api import DEFAULT_TARGET, RunConfig, run
    from bench.components import parse_component_names, parse_component_options

    if args.batch_size < 1:
        raise UsageError(f"Expected --batch-size >= 1, got {args.batch_size}.")
    config = RunConfig(
        methods=args.methods,
        target=args.target or DEFAULT_TARGET,
        weights=args.weights,
        layers=args.layers,
        probe=args.probe,
        probe_root=args.probe_root,
        download=args.download,
        units=args.units,
        device=args.device,
        seed=args.seed,
        batch_size=args.batch_size,
        method_config=_config_items(args.config),
        probe_options=_probe_options(args.probe_option),
        components=parse_component_names(args.component),
        component_options=parse_component_options(args.component_option),
        out=args.out,
        cache_dir=args.cache_dir,
        progress=not args.no_progress and sys.stderr.isatty(),
        executor=args.executor,
        address=args.address,
        workers=args.workers,
        resource_wait=args.resource_wait,
    )
    if args.address and args.executor != "ray":
        raise UsageError("--address is for --executor ray; add --executor ray or drop it.")
    if args.resource_wait and args.executor != "ray":
        raise UsageError("--resource-wait is for --executor ray; add --executor ray or drop it.")
    if not args.resource_wait >= 0:
        raise UsageError(f"Expected --resource-wait >= 0 seconds, got {args.resource_wait}.")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"Expected --workers >= 1, got {args.workers}.")
    suite_config = _suite_options(args.suite_option)
    if args.no_suites and (args.suites or suite_config):
        raise UsageError("--no-suites cannot be combined with --suites or --suite-option.")
    if args.no_leaderboard and args.leaderboard:
        raise UsageError("--no-leaderboard cannot be combined with --leaderboard DIR.")
    if args.leaderboard and args.no_suites:
        raise UsageError("--leaderboard needs the suites' results; drop --no-suites.")
    if args.metrics_check:
        from bench.registry import TARGETS

        if args.no_suites:
            raise UsageError("--metrics-check belongs to scoring; drop --no-suites.")
        if TARGETS.get(config.target).family != "synthetic":
            raise UsageError(
                f"--metrics-check runs on synthetic targets (their planted units and probe "
                f"segmentations); '{config.target}' is not one. Run 'bench metrics check "
                "--target synth.resnet' separately."
            )
    score_options = None if args.no_suites else _score_options(args, download=args.download)
    if suite_config:
        # Suite names and fields are checked before anything runs.
        from bench.suites import get_suite

        for name, fields in suite_config.items():
            get_suite(name)(**fields)
    if config.probe_options:
        # Checked before the target loads (which may download weights).
        from bench.api import resolve_probe_name
        from bench.probes import parse_probe_options
        from bench.registry import TARGETS

        probe = resolve_probe_name(config, TARGETS.get(config.target).family)
        parse_probe_options(probe, config.probe_options)
    if args.suites and score_options is not None:
        # Suites asked for by name must be able to run (their models, weights, text models)
        # before anything is recorded; those chosen automatically are skipped with a reason.
        from bench.suites.scoring import check_suites

        check_suites(
            args.suites,
            target=config.target,
            layers=config.layers,
            run={"components": config.components, "component_options": config.component_options},
            options=score_options,
            suite_config=suite_config,
        )
    t0 = time.perf_counter()
    result = run(config, complete=score_options is None, hold=hold)
    print(f"run directory: {result.run_dir}")
    print(f"recording: {RECORDING_TEXT[result.recording]}")
    # ok + failed = computed + cached + resumed: every unit is one of the three.
    print(
        f"{'method':<24} {'ok':>6} {'failed':>6} {'computed':>8} {'resumed':>7} {'cached':>6} "
        f"{'seconds':>8}"
    )
    for m in result.methods:
        print(
            f"{m.name:<24} {m.ok:>6} {m.error:>6} {m.computed:>8} {m.resumed:>7} {m.cached:>6} "
            f"{m.seconds:>8.2f}"
        )
    report = None
    if score_options is not None:
        from bench.api import score_run
        from bench.runner import mark_run

        try:
            report = score_run(
                result.run_dir, args.suites, options=score_options, suite_config=suite_config
            )
        except BaseException as e:
            mark_run(result.run_dir, "failed", error=f"scoring: {e}" if str(e) else "scoring")
            raise
        mark_run(result.run_dir, "complete")
        _print_report(report)
        _print_scores(report)
    cards: list[Any] = []
    if args.metrics_check and score_options is not None:
        from pathlib import Path

        from bench.api import metrics_check

        t1 = time.perf_counter()
        written = metrics_check(
            [config.target],
            Path(result.run_dir).parent / "metrics",
            seed=config.seed,
            device=config.device,
            cache_dir=config.cache_dir,
        )
        cards = list(written.values())
        _print_cards(written)
        print(f"metrics check: {time.perf_counter() - t1:.1f} s")
    if report is not None and report.results and not args.no_leaderboard:
        from pathlib import Path

        from bench.api import build_leaderboard

        site = args.leaderboard or Path(result.run_dir).parent / "leaderboard"
        print(f"leaderboard: {build_leaderboard([result.run_dir, *cards], site)}")
    print(f"total: {time.perf_counter() - t0:.1f} s")
    return result.exit_code


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    from bench.api import build_leaderboard

    print(f"leaderboard: {build_leaderboard(args.results, args.out)}")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from bench.api import score_labels, score_run

    suite_config = _suite_options(args.suite_option)
    if args.annotations:
        suite_config.setdefault("milannotations", {})["annotations"] = args.annotations
    options = _score_options(args, download=args.download)
    if args.run:
        if args.labels:
            raise UsageError("Pass either --labels (a label file) or --run (a run directory).")
        suites = _csv(args.suite) if args.suite else None
        report = score_run(args.run, suites, options=options, suite_config=suite_config)
    else:
        missing = [f"--{n}" for n in ("labels", "target", "suite") if not getattr(args, n)]
        if missing:
            raise UsageError(
                f"bench score needs {', '.join(missing)} (or --run DIR to re-score a run)."
            )
        report = score_labels(
            args.labels,
            args.format,
            target=args.target,
            suite=args.suite,
            layer=args.layer,
            name=args.name,
            out=args.out,
            weights=args.weights,
            options=options,
            suite_config=suite_config,
        )
    _print_report(report)
    return 0


def _cmd_list(what: str) -> int:
    from bench.registry import METHODS, PROBES, TARGETS

    if what == "methods":
        for name in METHODS.names():
            cls = METHODS.get(name)
            print(f"{name:<24} v{cls.version:<4} {_first_sentence(cls.__doc__)}")
    elif what == "targets":
        for name in TARGETS.names():
            spec = TARGETS.get(name)
            print(f"{name:<24} {spec.family:<12} {spec.description}")
    elif what == "suites":
        from bench.suites import get_suite, suite_names

        for name in suite_names():
            cls = get_suite(name)
            print(f"{name:<24} v{cls.version:<4} {cls.summary}")
    else:
        for name in PROBES.names():
            factory = PROBES.get(name)
            print(f"{name:<24} {_first_sentence(getattr(factory, '__doc__', None))}")
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    from bench.cache import Cache

    cache = Cache(args.cache_dir)
    staged = f" and its staging directory {cache.root}" if cache.is_remote else ""
    if args.action == "clear":
        n = cache.clear(args.stage)
        print(f"removed {n} entr{'y' if n == 1 else 'ies'} from {cache.location}{staged}")
        return 0
    entries = cache.entries(args.stage)
    temps = cache.temporaries(args.stage)
    total = sum(e.size for e in entries)
    for e in entries:
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.created))
        print(f"{e.stage:<16} {e.key[:16]}  {e.size / 1e6:>9.2f} MB  {stamp}")
    for t in temps:
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(t.created))
        held = {True: "being written", False: "left by a killed run", None: "left by a run"}
        state = (
            "an upload in progress, torn or replaced" if t.remote else held[cache.writer_alive(t)]
        )
        print(f"{t.stage:<16} {t.key[:16]}  {t.size / 1e6:>9.2f} MB  {stamp}  temporary, {state}")
    line = f"{len(entries)} entries, {total / 1e6:.2f} MB"
    if temps:
        line += f"; {len(temps)} temporary, {sum(t.size for t in temps) / 1e6:.2f} MB"
    print(f"{line} in {cache.location}")
    if cache.is_remote:
        copies = cache.staged_entries(args.stage)
        print(
            f"this node's staging directory {cache.root} holds {len(copies)} entries, "
            f"{sum(e.size for e in copies) / 1e6:.2f} MB"
        )
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bench.cache import Cache
    from bench.datasets import DATASETS, default_dest, fetch_dataset

    dest = Path(args.dest).expanduser() if args.dest else default_dest(Cache(args.cache_dir))
    if args.data_command == "fetch":
        print(fetch_dataset(args.name, dest, progress=sys.stderr.isatty()))
        return 0
    for d in DATASETS.values():
        found = d.locate(dest)
        where = f"present  {found}" if found is not None else "missing"
        print(f"{d.name:<14} {d.size:>8}  {where:<10} ({d.description}; {d.use})")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bench.synth import train as synth_train

    if args.action == "train":
        out = Path(args.out) if args.out else None
        names = [args.target] if args.target else None
        for path in synth_train.train_all(
            names=names, seed=args.seed, out_dir=out, progress=sys.stderr.isatty()
        ):
            print(f"wrote {path}")
        return 0
    names = [args.target] if args.target else None
    print(json.dumps(synth_train.report_all(names=names), indent=2, sort_keys=True))
    return 0


def _cmd_metrics(args: argparse.Namespace) -> int:
    from bench.api import metrics_check

    written = metrics_check(
        [args.target] if args.target else None,
        args.out,
        n_images=args.n_images,
        seed=args.seed,
        device=args.device,
        cache_dir=args.cache_dir,
        text_suites=args.text_suites,
        row_groups=args.rows,
        annotations=args.annotations,
    )
    _print_cards(written)
    return 0


def _print_cards(written: Mapping[str, Any]) -> None:
    """Each report card: its file and the pass/FAIL table of every metric and test."""
    from bench.results import read_suite_result

    for target, path in written.items():
        result = read_suite_result(path)
        verdicts = result.settings["verdicts"]
        tests = [m.name for m in result.metrics]
        print(f"{target}: {result.settings['units']} known units -> {path}")
        print(f"  {'metric':<36}" + "".join(f"{t:>16}" for t in tests))
        for metric, per in sorted(verdicts.items(), key=lambda kv: ("/" in kv[0], kv[0])):
            cells = [
                "n/a"
                if v.get("applicable") is False
                else f"{'pass' if v['passed'] else 'FAIL'} {v['passed_units']}/{v['judged_units']}"
                for v in (per.get(t, {"applicable": False}) for t in tests)
            ]
            print(f"  {metric:<36}" + "".join(f"{c:>16}" for c in cells))
        text = result.settings.get("text") or {}
        if text:
            frequent = {
                v["frequent_label"]["label"]
                for v in verdicts.values()
                if v.get("frequent_label", {}).get("label")
            }
            print(
                f"  text metrics: constant label {text.get('constant')!r}, frequent label "
                f"{', '.join(repr(x) for x in sorted(frequent)) or 'none'}; missing_labels and "
                "extra_labels do not apply to them (n/a)"
            )
            for row, v in sorted((text.get("unavailable") or {}).items()):
                print(f"  n/a {row}: {v['reason']}")


def _cmd_milan(args: argparse.Namespace) -> int:
    from bench import api

    fields = parse_fields(args.config, "--config")
    if args.root:
        fields["annotations_root"] = args.root
    if args.download:
        fields["download"] = True
    if args.action == "train":
        path, info = api.milan_train(
            keys=args.keys or "synthetic",
            hold_out=args.hold_out,
            out=args.out,
            config=fields,
            seed=args.seed,
            device=args.device,
            cache_dir=args.cache_dir,
            progress=sys.stderr.isatty(),
        )
        print(json.dumps(info, indent=2, sort_keys=True))
        print(f"model: {path}")
        return 0
    if args.out or args.hold_out:
        raise UsageError("--out and --hold-out belong to 'bench milan train'.")
    rows = api.milan_evaluate(
        experiment=args.experiment,
        keys=args.keys,
        config=fields,
        seed=args.seed,
        device=args.device,
        cache_dir=args.cache_dir,
        progress=sys.stderr.isatty(),
    )
    print(
        f"{'split':<64} {'train':>6} {'test':>5} {'BLEU wPMI':>9} {'BLEU greedy':>11} "
        f"{'BLEU beam':>9}"
    )
    for r in rows:
        print(
            f"{r['name']:<64} {r['train_units']:>6} {r['test_units']:>5} "
            f"{r['bleu_rerank']:>9.2f} {r['bleu_greedy']:>11.2f} {r['bleu_beam']:>9.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
