"""The ``bench`` command: argument parsing only; the work is in bench.api and friends.

Exit codes: 0 ok, 1 some units failed, 2 usage error (any BenchError), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.errors import BenchError, UsageError
from bench.options import parse_fields, parse_owned_fields

log = logging.getLogger("bench")


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


def _probe_options(items: Sequence[str]) -> dict[str, str]:
    """``["categories=object,part", "max_images=100"]`` -> ``{"categories": "object,part", ...}``
    (values stay text: the probe set's factory says how to parse them)."""
    return parse_fields(items, "--probe-option", text=True, shape="KEY=VALUE")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench",
        description="Compare methods that label the units of vision networks with text.",
    )
    p.add_argument("--version", action="version", version=_version())
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    p.add_argument(
        "--cache-dir",
        dest="global_cache_dir",
        metavar="DIR",
        help="cache directory for every command (stage caches, datasets, exports, downloaded "
        "models; default: $BENCH_CACHE_DIR or ~/.cache/neuron-bench); a command's own "
        "--cache-dir wins",
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
        "--units", help="units to describe, e.g. '0-9,15' or 'layer4:0-9' (0-based; default: all)"
    )
    r.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--batch-size", type=int, default=64)
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
        "--cache-dir", help="cache directory (default: $BENCH_CACHE_DIR or ~/.cache/neuron-bench)"
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument(
        "--leaderboard",
        metavar="DIR",
        help="after scoring, build the leaderboard site of this run into DIR",
    )
    r.add_argument(
        "--suites",
        type=_csv,
        help="suites that score the run after the methods (default: every suite that applies "
        "to the target; one that cannot run here is skipped and said so)",
    )
    r.add_argument("--no-suites", action="store_true", help="describe only; score nothing")
    _add_scoring_args(r)

    sc = sub.add_parser(
        "score",
        help="score labels written by another tool (or re-score a run directory)",
        description="Score a label file of another tool as a named method, loading only what "
        "the suite needs (final-layer and milannotations need text alone), or re-score a run "
        "directory with --run.",
    )
    sc.add_argument("--labels", help="label file (formats: bench.imports.FORMATS)")
    sc.add_argument(
        "--format",
        default="auto",
        help="netdissect-lite, netdissect, compexp, milan, clip-dissect, dnd (default: auto)",
    )
    sc.add_argument("--target", help="target the labels describe, e.g. resnet50")
    sc.add_argument(
        "--suite",
        help="milannotations, final-layer, cifar-auroc or planted (with --run: comma-separated; "
        "default all that apply)",
    )
    sc.add_argument(
        "--layer",
        help="layer of files without a layer column (NetDissect, compexp, DnD); final-layer "
        "defaults to the target's final layer",
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
    c.add_argument("--cache-dir")

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
    return p


def _version() -> str:
    from bench import __version__

    return f"bench {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(
        level=level, format="%(levelname).1s %(name)s: %(message)s", stream=sys.stderr
    )
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


def _dispatch(args: argparse.Namespace) -> int:
    if getattr(args, "global_cache_dir", None) and not getattr(args, "cache_dir", None):
        args.cache_dir = args.global_cache_dir
    if args.command == "run":
        return _cmd_run(args)
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


def _cmd_run(args: argparse.Namespace) -> int:
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
    )
    suite_config = _suite_options(args.suite_option)
    if args.no_suites and (args.suites or suite_config):
        raise UsageError("--no-suites cannot be combined with --suites or --suite-option.")
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
    t0 = time.perf_counter()
    result = run(config)
    print(f"run directory: {result.run_dir}")
    print(f"recording: {'from cache' if result.record_cached else 'computed'}")
    print(f"{'method':<24} {'ok':>6} {'failed':>6} {'computed':>8} {'resumed':>7} {'seconds':>8}")
    for m in result.methods:
        print(
            f"{m.name:<24} {m.ok:>6} {m.error:>6} {m.computed:>8} {m.resumed:>7} {m.seconds:>8.2f}"
        )
    if score_options is not None:
        from bench.api import score_run

        report = score_run(
            result.run_dir, args.suites, options=score_options, suite_config=suite_config
        )
        _print_report(report)
    if args.leaderboard:
        from bench.api import build_leaderboard

        print(f"leaderboard: {build_leaderboard([result.run_dir], args.leaderboard)}")
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
            doc = (cls.__doc__ or "").strip().splitlines()
            print(f"{name:<24} v{cls.version:<4} {doc[0] if doc else ''}")
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
            doc = (getattr(factory, "__doc__", "") or "").strip().splitlines()
            print(f"{name:<24} {doc[0] if doc else ''}")
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    from bench.cache import Cache

    cache = Cache(args.cache_dir)
    if args.action == "clear":
        n = cache.clear(args.stage)
        print(f"removed {n} entr{'y' if n == 1 else 'ies'} from {cache.root}")
        return 0
    entries = cache.entries(args.stage)
    total = sum(e.size for e in entries)
    for e in entries:
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.created))
        print(f"{e.stage:<16} {e.key[:16]}  {e.size / 1e6:>9.2f} MB  {stamp}")
    print(f"{len(entries)} entries, {total / 1e6:.2f} MB in {cache.root}")
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
    from bench.results import read_suite_result

    written = metrics_check(
        [args.target] if args.target else None,
        args.out,
        n_images=args.n_images,
        seed=args.seed,
        device=args.device,
        cache_dir=args.cache_dir,
    )
    for target, path in written.items():
        result = read_suite_result(path)
        verdicts = result.settings["verdicts"]
        tests = list(next(iter(verdicts.values())))
        print(f"{target}: {result.settings['units']} known units -> {path}")
        print(f"  {'metric':<20}" + "".join(f"{t:>18}" for t in tests))
        for metric, per in verdicts.items():
            cells = [
                f"{'pass' if v['passed'] else 'FAIL'} {v['passed_units']}/{v['judged_units']}"
                for v in per.values()
            ]
            print(f"  {metric:<20}" + "".join(f"{c:>18}" for c in cells))
    return 0


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
