"""Command line: fedsqueeze run | resume | report | eval | data | bench | size | codecs | flower."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer
from rich.console import Console

from .errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Communication-efficient federated LoRA fine-tuning with an exact byte ledger.",
)
codecs_app = typer.Typer(no_args_is_help=True, help="List and benchmark codecs.")
app.add_typer(codecs_app, name="codecs")
from .flower_cli import flower_app  # noqa: E402  (a small typer app; Flower itself loads lazily)

app.add_typer(flower_app, name="flower")
console = Console()


VERBOSE = typer.Option(False, "--verbose", help="Show the libraries' logs and the weight-loading progress bar.")


def _quiet_libraries(verbose: bool = False) -> None:
    from .quiet import quiet_console, set_verbose

    set_verbose(verbose)
    quiet_console()


def _fail(exc: Exception) -> None:
    from rich.markup import escape

    # escaped: "pip install 'fedsqueeze[eval]'" or "hf:NAME:train[:100]" are text, not markup
    console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _show(result) -> None:
    from .metrics.console import summary_table

    if result.summary is not None:
        console.print(summary_table(result.summary))
        console.print(f"run directory: {result.paths.out}")
        if (result.paths.adapter / "README.md").is_file():
            console.print(f"adapter: {result.paths.adapter} (peft; its model card: README.md)")
        if (result.paths.out / "track").is_dir():
            console.print(f"trackers: {result.paths.out / 'track'} (README: Experiment trackers)")


def _log(text: str) -> None:
    console.print(text, highlight=False)


@app.command()
def run(
    config: Path = typer.Argument(..., help="TOML config file."),
    set_: list[str] = typer.Option([], "--set", help="Override a key, e.g. --set train.rounds=2 (repeatable)."),
    out: Path | None = typer.Option(None, "--out", help="Run directory (default runs/<config name>)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory."),
    until: int | None = typer.Option(None, "--until", min=1, help="Stop after this round (resume later)."),
    verbose: bool = VERBOSE,
):
    """Run a federated fine-tuning job and write the run directory."""
    from . import api
    from .metrics.console import RichProgress

    _quiet_libraries(verbose)
    try:
        result = api.run(config, set_, out, overwrite=overwrite, until=until, log=_log, progress=RichProgress(console))
    except UserError as exc:
        _fail(exc)
    _show(result)


@app.command()
def resume(
    run_dir: Path = typer.Argument(..., help="A run directory with a checkpoint/."),
    set_: list[str] = typer.Option([], "--set", help="Override a key, e.g. --set train.rounds=8 to extend."),
    until: int | None = typer.Option(None, "--until", min=1, help="Stop after this round."),
    rebuild_rounds: bool = typer.Option(
        False, "--rebuild-rounds", help="Rewrite a missing or damaged rounds.jsonl from the checkpoint."
    ),
    verbose: bool = VERBOSE,
):
    """Continue an interrupted (or finished, to extend) run from its last checkpoint."""
    from . import api
    from .metrics.console import RichProgress

    _quiet_libraries(verbose)
    try:
        result = api.resume(
            run_dir, set_, until=until, rebuild_rounds=rebuild_rounds, log=_log, progress=RichProgress(console)
        )
    except UserError as exc:
        _fail(exc)
    _show(result)


@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., help="One or more run directories."),
    out: Path | None = typer.Option(
        None, "--out", help="Folder for report.md and the PNG plots (default: report/ beside the runs)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace report files already in --out."),
):
    """Markdown table (one row per run) and plots of eval loss vs round and vs cumulative MB."""
    from . import api

    try:
        done = api.report(run_dirs, out, overwrite=overwrite)
    except UserError as exc:
        _fail(exc)
    print(done.table)
    for p in done.paths:
        console.print(f"wrote {p}", highlight=False)


@app.command("eval")
def eval_(
    target: Path | None = typer.Argument(
        None, help="A run directory, its adapter/ folder or any peft adapter folder (omit with --base and --model)."
    ),
    data: str | None = typer.Option(None, "--data", help="data.source to judge on (default: the run's own)."),
    metrics: str | None = typer.Option(
        None,
        "--metrics",
        help="Comma-separated: loss, choice, rouge, exact, classify (default: the run's eval.metrics).",
    ),
    base: bool = typer.Option(False, "--base", help="Judge the base model alone (the adapter disabled)."),
    model: str | None = typer.Option(
        None, "--model", help="model.name (default: the run's, or adapter_config.json's)."
    ),
    set_: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set eval.choices=5 (repeatable)."),
    out: Path | None = typer.Option(None, "--out", help="JSON file for the result (default: TARGET/eval.json)."),
    lm_eval: str | None = typer.Option(
        None, "--lm-eval", help="Comma-separated lm-evaluation-harness tasks (needs fedsqueeze[eval])."
    ),
    include_path: Path | None = typer.Option(None, "--include-path", help="Folder of local harness task YAML files."),
    lm_eval_limit: int | None = typer.Option(None, "--lm-eval-limit", min=1, help="Examples per harness task."),
    verbose: bool = VERBOSE,
):
    """Judge a saved adapter (or the base model) on any data source: held-out loss, multiple-choice
    accuracy, Rouge-L and exact match, with the run's own code; a table and a JSON file."""
    from . import api
    from .metrics.console import eval_table, lm_eval_table

    _quiet_libraries(verbose)
    if out is None and target is not None:
        out = (target if target.is_dir() else target.parent) / "eval.json"
    try:
        result = api.evaluate(
            target,
            data,
            metrics,
            base=base,
            overrides=set_,
            model=model,
            out=out,
            lm_eval=lm_eval,
            include_path=include_path,
            lm_eval_limit=lm_eval_limit,
            log=_log,
        )
    except UserError as exc:
        _fail(exc)
    console.print(eval_table(result))
    if result.get("lm_eval"):
        console.print(lm_eval_table(result["lm_eval"]))
    if "written" in result:
        console.print(f"wrote {result['written']}", highlight=False)


@app.command()
def data(
    config: Path = typer.Argument(..., help="TOML config file."),
    set_: list[str] = typer.Option([], "--set", help="Override a key (repeatable)."),
    all_clients: bool = typer.Option(False, "--all", help="List every client (default: 20 and the spread)."),
    plot: Path | None = typer.Option(
        None, "--plot", help="Write the label distribution per owner as stacked bars to this PNG."
    ),
    verbose: bool = VERBOSE,
):
    """Load, tokenize and partition the data of a config, and print the partition summary and the
    label distribution per owner."""
    from . import config as config_mod

    try:
        cfg = config_mod.load(config, set_)  # before torch: a typo costs no import
    except UserError as exc:
        _fail(exc)
    from .checks import check
    from .data import build_federation
    from .models import load_base
    from .registry import METHODS

    _quiet_libraries(verbose)
    try:
        check(cfg)
        _, tok = load_base(cfg.model.name, log=console.print)
        t0 = time.perf_counter()
        fed = build_federation(cfg.data, tok, cfg.seed, pooled=METHODS.get(cfg.method).mode.pooled)
        seconds = time.perf_counter() - t0
        console.print(fed.summary(show=len(fed.clients) if all_clients else 20), highlight=False)
        console.print(f"built in {seconds:.1f} s (read, tokenize, partition)", highlight=False)
        from .data import distribution

        shown = distribution.table(fed, show=len(fed.clients) if all_clients else 20)
        if shown:
            console.print(shown, highlight=False, soft_wrap=True)
        if plot is not None:
            written = distribution.plot(fed, plot, fed.description)
            console.print(f"wrote {written}", highlight=False)
    except UserError as exc:
        _fail(exc)


@app.command()
def bench(
    suite: str = typer.Option(
        "tiny",
        "--suite",
        help="w4 (SmolLM2-135M, 4 domains), tiny, frontier (W4-lite sweep of each method's knob), tiny-frontier, "
        "wordnet-cls (45-label classification, 10 label-skewed owners), wordnet-cls-frontier (its sweep, judged "
        "by accuracy), tiny-cls or tiny-cls-frontier.",
    ),
    methods: str | None = typer.Option(None, "--methods", help="Comma-separated rows (default: the suite's)."),
    rounds: int | None = typer.Option(None, "--rounds", help="Override the suite's number of rounds."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key in every row (repeatable)."),
    out: Path | None = typer.Option(None, "--out", help="Folder for the run directories (default runs/bench-SUITE)."),
    reuse: bool = typer.Option(False, "--reuse", help="Reuse rows that finished with the same configuration."),
    no_train: bool = typer.Option(
        False,
        "--no-train",
        help="Only tabulate rows that finished with the same configuration "
        "(implies --reuse); skip the others instead of training them.",
    ),
    fmt: str = typer.Option("markdown", "--format", help="markdown or json."),
    seeds: str | None = typer.Option(
        None,
        "--seeds",
        help="Run the suite once per seed (e.g. 0,1 or 0-2) into OUT/seedN and write OUT/seeds.md: each row "
        "against its own seed's FedAvg, the mean and spread over the seeds.",
    ),
):
    """Run several methods on one workload with the same seed, partition and step budget."""
    import json

    from .bench import run_suite
    from .bench import seeds as seeds_mod
    from .bench.runner import markdown, run_seeds
    from .metrics.console import RichProgress

    _quiet_libraries()
    if fmt not in ("markdown", "json"):
        _fail(UserError(f"--format {fmt!r}: allowed: markdown, json"))
    quiet = fmt == "json"
    log = (lambda *a, **k: None) if quiet else console.print
    try:
        rows = [m.strip() for m in methods.split(",")] if methods else None
        progress = None if quiet else (lambda: RichProgress(console))
        if seeds is not None:
            many = run_seeds(
                suite,
                seeds_mod.parse(seeds),
                out,
                set_,
                rows=rows,
                rounds=rounds,
                progress_factory=progress,
                log=log,
                reuse=reuse or no_train,
                train=not no_train,
            )
        else:
            results = run_suite(
                suite, rows, rounds, out, set_, progress, log=log, reuse=reuse or no_train, train=not no_train
            )
    except UserError as exc:
        _fail(exc)
    if seeds is not None:
        print(json.dumps({k: many[k] for k in ("per_seed", "seeds")}, indent=1) if quiet else many["markdown"])
    else:
        print(json.dumps(results, indent=1) if quiet else markdown(results))


@app.command()
def size(
    config: Path | None = typer.Argument(None, help="TOML config file (optional)."),
    model: str | None = typer.Option(
        None,
        "--model",
        help="model.name: a shipped architecture "
        "(llama-3.2-3b, qwen2-7b, llama-3.1-8b, smollm2-135m), a folder or an id.",
    ),
    set_: list[str] = typer.Option([], "--set", help="Override a key, e.g. --set lora.r=64 (repeatable)."),
    fmt: str = typer.Option("markdown", "--format", help="markdown or json."),
):
    """LoRA parameters and the bytes of one round's messages per method, from shapes alone (no weights)."""
    import json

    from . import config as config_mod
    from .sizing import describe, size_report

    _quiet_libraries()
    try:
        if fmt not in ("markdown", "json"):
            raise UserError(f"--format {fmt!r}: allowed: markdown, json")
        cfg = config_mod.load(config, ([f"model.name={model}"] if model else []) + list(set_))
        report = size_report(cfg)
    except UserError as exc:
        _fail(exc)
    print(json.dumps(report, indent=1) if fmt == "json" else describe(report))


@codecs_app.command("bench")
def codecs_bench(
    model: str = typer.Option("tiny", "--model", help="tiny or smollm2-135m (or any model.name)."),
    rank: int = typer.Option(16, "--rank", help="LoRA rank of the update."),
    codecs: str | None = typer.Option(None, "--codecs", help="Codec specs separated by ';'."),
    fmt: str = typer.Option("markdown", "--format", help="markdown or json."),
):
    """Encode a real LoRA update (a few local steps on real data) with each codec configuration."""
    import json

    from .bench.update import real_update
    from .codecs.bench import run_bench

    _quiet_libraries()
    try:
        update, layout = real_update(model, r=rank, log=(lambda *a, **k: None) if fmt == "json" else console.print)
        specs = [c.strip() for c in codecs.split(";")] if codecs else None
        rows = run_bench(update, layout, specs)
    except UserError as exc:
        _fail(exc)
    if fmt == "json":
        print(json.dumps(rows, indent=1))
        return
    print("| codec | wire bytes | raw bytes | ratio | rel error | encode ms | decode ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['codec']} | {r['wire_bytes']} | {r['raw_bytes']} | {r['ratio']:.4f} | {r['rel_error']:.4f} | "
            f"{r['encode_ms']:.1f} | {r['decode_ms']:.1f} |"
        )


@codecs_app.command("list")
def codecs_list(fmt: str = typer.Option("text", "--format", help="text or json.")):
    """Registered codec stages by kind, each parameter with its default and allowed range."""
    import json

    from .codecs.listing import catalog, describe

    if fmt not in ("text", "json"):
        _fail(UserError(f"--format {fmt!r}: allowed: text, json"))
    print(json.dumps(catalog(), indent=1) if fmt == "json" else describe())


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted; the last finished round is checkpointed (fedsqueeze resume DIR)")
        sys.exit(130)


if __name__ == "__main__":
    main()
