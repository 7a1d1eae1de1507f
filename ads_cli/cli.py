"""The `ads` command line: parses arguments and calls the stage modules. No logic lives here."""

from __future__ import annotations

import dataclasses
import os
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator, List, Optional

import orjson
import typer
from rich.markup import escape

from . import __version__
from . import params as params_mod
from .errors import AdsError
from .paths import Paths, project_lock
from .progress import console, setup_logging

app = typer.Typer(
    help="Active Data Search: a language model finds, collects and uses the data that makes it better at tasks.\n\n"
    "Stages read and write JSONL under data/ and take their settings from their section of params.yaml.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOpt = typer.Option(Path("params.yaml"), "--params", help="Params file (params.tiny.yaml has the smallest sizes).")
SetOpt = typer.Option(None, "--set", help="Override one setting, section.key=value; repeatable.")
VerboseOpt = typer.Option(False, "-v", "--verbose", help="Also print the full log (always in logs/<stage>.log).")
NoCacheOpt = typer.Option(False, "--no-cache", help="Do not read or write the persistent model-call cache.")


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@contextmanager
def stage(name: str, params_path: Path, overrides: list[str] | None, verbose: bool,
          no_cache: bool = False, max_cost: float | None = None, writes: bool = True) -> Iterator[tuple[dict, Paths]]:
    """Load params, set up logging, and turn any `AdsError` into one line with exit code 2.

    A command that `writes` artifacts holds the project folder's lock while it runs, so that a
    second run in the same folder stops at once instead of doing every call twice.
    `--no-cache` and `--max-cost` are shorthands for `--set lm.cache=false` and
    `--set execute.max_cost=X`: the library reads them from params like any other setting.
    """
    paths = Paths.here()
    overrides = list(overrides or []) + (["lm.cache=false"] if no_cache else [])
    overrides += [f"execute.max_cost={max_cost}"] if max_cost is not None else []
    try:
        params = params_mod.load(params_path, overrides)
        paths.check(params)
        with project_lock(paths.root) if writes else nullcontext():
            setup_logging(name, paths.logs, verbose)
            yield params, paths
    except AdsError as e:
        fail(str(e))


def _version(value: bool) -> None:
    if value:
        print(f"ads {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    pass


@app.command()
def prepare(
    docs: Optional[str] = typer.Option(None, "--docs", help="Your own corpus: JSONL/JSON/Parquet of {title, text, id?, description?, topic?}, or a source string."),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="Your own tasks: JSONL/JSON/Parquet of {task, input, reference, metric?, category?}, or a source string."),
    params: Path = ParamsOpt,
    set_: Optional[List[str]] = SetOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Fetch the pinned sources (or read your files) and write data/prepared/{docs,tasks_train,tasks_test}.jsonl.

    Reads: prepare.docs and prepare.tasks (default: 10,033 Wikipedia summaries and the OpenAI
    evals registry, both from pinned wheels). Writes: data/prepared/ and its manifest.json.
    """
    from .stages import prepare as stage_mod

    with stage("prepare", params, set_, verbose) as (p, paths):
        m = stage_mod.run(p, paths, docs_source=docs, tasks_source=tasks)
        c = m["counts"]
        console.print(
            f"prepare: {c['docs']} docs, {c['tasks_train']} train tasks, {c['tasks_test']} test tasks"
            f" ({c['tasks_kept']} kept; skipped {c['skipped']}) in {m['run']['timings']['total_s']:.1f}s -> {paths.prepared}"
        )


@app.command()
def index(params: Path = ParamsOpt, set_: Optional[List[str]] = SetOpt, verbose: bool = VerboseOpt) -> None:
    """Build the Tantivy BM25 index (title boosted, English stemming).

    Reads: data/prepared/docs.jsonl. Writes: data/index/ (the index and its manifest.json).
    """
    from .stages import index as stage_mod

    with stage("index", params, set_, verbose) as (p, paths):
        m = stage_mod.run(p, paths)
        console.print(f"index: {m['counts']['docs']} docs in {m['run']['timings']['build_s']:.1f}s -> {paths.index}")


@app.command()
def search(
    query: str = typer.Argument(..., help="Any text; it is reduced to word tokens, so no syntax can break it."),
    k: int = typer.Option(5, "-k", min=1, help="How many hits."),
    params: Path = ParamsOpt,
    set_: Optional[List[str]] = SetOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Query the index; print the top hits, one JSON object per line. Reads: data/index/."""
    from .stages import index as stage_mod

    with stage("search", params, set_, verbose, writes=False) as (_, paths):
        for hit in stage_mod.search(query, k, paths):
            sys.stdout.write(orjson.dumps(hit).decode() + "\n")


IterOpt = typer.Option(1, "--iter", min=1, help="Iteration K: reads and writes data/iter_K/.")
MaxCostOpt = typer.Option(None, "--max-cost", help="Hard budget (cost units) for this run's API calls: stops cleanly, keeps what is done. Default: execute.max_cost.")



@app.command()
def sample(
    iteration: int = IterOpt,
    no_cache: bool = NoCacheOpt,
    params: Path = ParamsOpt,
    set_: Optional[List[str]] = SetOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """The optimizer writes trajectories (API-call programs) for every train task.

    Reads: data/prepared/tasks_train.jsonl, the models in lm, the optimizer's exemplars (iteration
    1: the seed exemplars shipped with ads). Writes: data/iter_K/trajectories.jsonl and
    sample_manifest.json (parse rate, API mix, cost). With sample.single_calls, each listed API
    called once on a task's first observed question is written beside them (source: single_call).
    """
    from .stages import sample as stage_mod

    with stage("sample", params, set_, verbose, no_cache) as (p, paths):
        m = stage_mod.run(p, paths, iteration)
        c = m["counts"]
        console.print(
            f"sample: {c['trajectories']} trajectories for {c['tasks']} tasks"
            + (f" (and {c['single_calls']} single calls)" if c["single_calls"] else "") + f", parse rate {c['parse_rate']:.0%},"
            f" {c['empty_trajectories']} empty, API mix {c['api_mix']}, {m['cost']['optimizer_tokens']} optimizer tokens"
            f" in {m['run']['timings']['total_s']:.0f}s -> {paths.trajectories(iteration)}"
        )


@app.command()
def execute(
    iteration: int = IterOpt,
    max_cost: Optional[float] = MaxCostOpt,
    no_cache: bool = NoCacheOpt,
    params: Path = ParamsOpt,
    set_: Optional[List[str]] = SetOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Run every call of every trajectory; identical calls run once; a killed run resumes.

    Reads: data/iter_K/trajectories.jsonl, data/index/, the models. Writes:
    data/iter_K/executions.jsonl (items with provenance, cost, errors), the journal and
    execute_manifest.json.
    """
    from .stages import execute as stage_mod

    with stage("execute", params, set_, verbose, no_cache, max_cost) as (p, paths):
        m = stage_mod.run(p, paths, iteration)
        c = m["counts"]
        console.print(
            f"execute: {c['trajectories']} trajectories, {c['calls']} calls ({c['unique_calls']} unique,"
            f" {m['run']['resumed_calls']} resumed, {c['failed_calls']} failed), items {c['items']}, cost {m['cost']['total']:.0f}"
            f" in {m['run']['timings']['total_s']:.0f}s -> {paths.executions(iteration)}"
        )


@app.command()
def train(
    iterations: Optional[int] = typer.Option(None, "--iter", min=1, help="How many times to run sample -> execute -> update. Default: train.iterations."),
    max_cost: Optional[float] = MaxCostOpt,
    no_cache: bool = NoCacheOpt,
    params: Path = ParamsOpt,
    set_: Optional[List[str]] = SetOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Run the ADS loop: sample -> execute -> reward and improve the optimizer, N times.

    Reads: data/prepared/tasks_train.jsonl, data/index/, the models. Writes per iteration K:
    data/iter_K/{trajectories,executions,rewards,best,preferences,optimizer_state}.jsonl and
    manifests; results/train_metrics.json and results/train_plot.json. A partly finished
    iteration resumes (call cache + execute journal).
    """
    from .stages import train as stage_mod

    with stage("train", params, set_, verbose, no_cache, max_cost) as (p, paths):
        s = stage_mod.run(p, paths, iterations)
        line = (f"train: {s['iterations']} iterations, last: mean reward {s['mean_reward']:+.4f}, mean gain {s['mean_gain']:+.4f},"
                f" mean cost {s['mean_cost']:.0f}, parse rate {s['parse_rate']:.0%}")
        if "last_vs_previous" in s:
            c = s["last_vs_previous"]
            line += f"; iteration {c['to']} vs {c['from']}: {c['mean_diff']:+.4f} per task, 95% CI [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]"
        console.print(line + f" in {s['run']['timings']['total_s']:.0f}s -> results/train_metrics.json")


@app.command()
def evaluate(
    tasks: Optional[Path] = typer.Option(None, "--tasks", help="Evaluate your own task file (the schema of data/prepared/tasks_test.jsonl) without retraining."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the results into this folder instead of results/ (evaluation.json,"
                                       " metrics.json, plot_scores.json, report.md, plots/, the call journal, the run log), so that"
                                       " the pipeline's results stay as they are. Default: results/."),
    max_cost: Optional[float] = MaxCostOpt,
    no_cache: bool = NoCacheOpt,
    params: Path = ParamsOpt,
    set_: Optional[List[str]] = SetOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Compare the trained optimizer with baselines on test tasks it never saw.

    Reads: data/prepared/tasks_test.jsonl (or --tasks), data/index/, data/optimizer/ (what
    `ads train` exported). Writes: results/evaluation.json, results/metrics.json, results/plot_scores.json
    and results/report.md (or into --out).
    """
    from .stages import evaluate as stage_mod

    with stage("evaluate", params, set_, verbose, no_cache, max_cost) as (p, paths):
        if out is not None:
            out = out.expanduser().absolute()
            if out.exists() and not out.is_dir():
                raise AdsError(f"--out {out} is a file; name a folder (it is created if missing)")
            if out.resolve() != paths.results.resolve():
                paths = dataclasses.replace(paths, results_dir=out)
        ev = stage_mod.run(p, paths, tasks)
        m = ev["metrics"]
        console.print(
            f"evaluate: {ev['completed_tasks']}/{ev['total_tasks']} tasks; ADS {m['avg_score']:.3f} vs no data {m['avg_baseline_score']:.3f}"
            f" ({m['mean_diff_vs_no_data']:+.3f}, 95% CI [{m['ci95_vs_no_data'][0]:+.3f}, {m['ci95_vs_no_data'][1]:+.3f}]),"
            f" win/tie/loss {m['win_rate']:.0%}/{m['tie_rate']:.0%}/{m['loss_rate']:.0%}, mean cost {m['avg_cost']:.0f}"
            f" in {ev['run']['timings']['total_s']:.0f}s -> {os.path.relpath(paths.report)}"
        )


@app.command()
def inspect(
    task_id: str = typer.Argument(..., help="A train task's id (data/prepared/tasks_train.jsonl)."),
    iteration: Optional[int] = typer.Option(None, "--iter", min=1, help="Iteration K (data/iter_K/). Default: the last finished one."),
    as_json: bool = typer.Option(False, "--json", help="Print the same as one JSON object."),
    no_answers: bool = typer.Option(False, "--no-answers", help="Leave out the policy's answers (they need the model)."),
    params: Path = ParamsOpt,
    set_: Optional[List[str]] = SetOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """One train task in one iteration: the optimizer's prompt (folded), each trajectory's calls and
    what they returned, its gain and cost in each lens, its reward and whether it was kept, and
    the policy's answers to two held-out examples without and with the kept data.

    Reads: data/prepared/tasks_train.jsonl and data/iter_K/ (what `ads train` wrote); the policy
    for its answers (from the call cache when train computed them).
    """
    from .stages import inspect as stage_mod

    with stage("inspect", params, set_, verbose, writes=False) as (p, paths):
        view = stage_mod.gather(p, paths, task_id, iteration, answers=not no_answers)
    if as_json:
        sys.stdout.write(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        console.print(stage_mod.render(view))


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="The prompt; sent as a user chat message unless --raw."),
    role: str = typer.Option("policy", "--role", help="Which model of params.yaml answers: policy or optimizer."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1, help="Default: lm.max_new_tokens."),
    temperature: Optional[float] = typer.Option(None, "--temperature", min=0.0, help="0 is greedy. Default: lm.temperature."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Sampling seed. Default: lm.seed."),
    raw: bool = typer.Option(False, "--raw", help="Plain completion: no chat template."),
    no_cache: bool = NoCacheOpt,
    params: Path = ParamsOpt,
    set_: Optional[List[str]] = SetOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Ask the model one prompt: prints its answer, then the token counts (a debugging aid)."""
    from .engine.roles import load_role

    if role not in ("policy", "optimizer"):
        fail(f"--role: expected policy or optimizer, got {role!r}")
    with stage("generate", params, set_, verbose, no_cache, writes=False) as (p, paths):
        model = load_role(p, role, paths)
        g = model.generate(
            [prompt],
            max_new_tokens=max_new_tokens or p["lm"]["max_new_tokens"],
            temperature=p["lm"]["temperature"] if temperature is None else temperature,
            seed=p["lm"]["seed"] if seed is None else seed,
            chat=not raw,
        )[0]
        if g.error:
            raise AdsError(f"--role {role}: the request failed: {g.error}")
        sys.stdout.write(g.text + "\n")
        console.print(
            f"[dim]{g.prompt_tokens} prompt tokens, {g.completion_tokens} generated"
            f"{', from cache' if g.cached else ''}{', prompt truncated' if g.truncated else ''}[/]"
        )


@app.command()
def serve(
    role: str = typer.Option("policy", "--role", help="Serve the GGUF that lm.<role> names, under the name openai_<role>.model"
                             " (the call cache knows answers by that name: give other weights another name)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8080, "--port", min=1, max=65535, help="Port; set openai_<role>.base_url to match."),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads; 0 means all cores."),
    params: Path = ParamsOpt,
    set_: Optional[List[str]] = SetOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Serve the packaged model with llama.cpp's OpenAI-compatible server (needs the `server` extra).

    Then run any stage with --set lm.policy_backend=openai (and the optimizer's the same):
    README, "Serving the models". Runs until stopped (Ctrl-C, SIGTERM or SIGHUP): `ads serve`
    becomes the server process itself, so stopping it leaves nothing behind.
    """
    from .stages import serve as serve_mod

    if role not in ("policy", "optimizer"):
        fail(f"--role: expected policy or optimizer, got {role!r}")
    with stage("serve", params, set_, verbose, writes=False) as (p, paths):
        command = serve_mod.server_command(serve_mod.gguf_path(p, role, paths), p[f"openai_{role}"]["model"], host, port,
                                           threads=threads)
        console.print(f"serving {command[4]} as {p[f'openai_{role}']['model']!r} at http://{host}:{port}/v1", highlight=False)
    serve_mod.become(command)


if __name__ == "__main__":
    app()
