"""The `mosaic` command: serve the gateway, run a worker, the ledger, auctions and evaluations.

Each sub-command imports its module lazily, so `mosaic --help` stays fast and the ledger consumer
does not import torch.
See docs/DESIGN.md § Layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

cli = typer.Typer(add_completion=False, no_args_is_help=True, help="MOSAIC auction service.")
ledger_cli = typer.Typer(no_args_is_help=True, help="The Redis billing ledger.")
cli.add_typer(ledger_cli, name="ledger")
archive_cli = typer.Typer(no_args_is_help=True, help="The audit archive in PostgreSQL (ARCHIVE_DSN).")
cli.add_typer(archive_cli, name="archive")
cache_cli = typer.Typer(
    no_args_is_help=True, help="The machine-wide cache (~/.cache/mosaic or MOSAIC_CACHE_DIR)."
)
cli.add_typer(cache_cli, name="cache")
keys_cli = typer.Typer(no_args_is_help=True, help="The keys that sign auction records (SIGNING_KEY_DIR).")
cli.add_typer(keys_cli, name="keys")


@cli.command()
def serve(
    model: Annotated[str | None, typer.Option(help="Model of the in-process worker.")] = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default: HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: PORT).")] = None,
) -> None:
    """Run the gateway. With nothing configured: + in-process worker + embedded Redis + ledger."""
    from app.gateway.app import serve as run_gateway
    from app.settings import Settings

    overrides: dict[str, object] = {}
    if model is not None:
        overrides["worker_model"] = model
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    run_gateway(Settings(**overrides))  # type: ignore[arg-type]


@cli.command()
def worker(
    model: Annotated[
        str, typer.Option(help="smollm2, gemma3-270m, tiny-random, random-7b, or a local HF directory.")
    ] = "smollm2",
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8001,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    dtype: Annotated[
        str | None, typer.Option(help="auto, float32 or bfloat16 (default: WORKER_DTYPE).")
    ] = None,
    engine: Annotated[str, typer.Option(help="transformers (this project) or vllm (exec `vllm serve`).")] = (
        "transformers"
    ),
    api_key: Annotated[
        str | None, typer.Option(help="Bearer token required on /v1 (default: WORKER_API_KEY).")
    ] = None,
    served_model_name: Annotated[
        str | None,
        typer.Option(help="Model id answered and listed in /v1/models (default: WORKER_SERVED_MODEL_NAME)."),
    ] = None,
    max_logprobs: Annotated[
        int | None,
        typer.Option(
            help="Most logprobs / prompt_logprobs a request may ask for (default: WORKER_MAX_LOGPROBS)."
        ),
    ] = None,
) -> None:
    """Run one LLM worker that speaks vLLM's OpenAI-compatible dialect."""
    from workers.server import serve as run_worker

    run_worker(
        model=model,
        host=host,
        port=port,
        device=device,
        engine=engine,
        dtype=dtype,
        api_key=api_key,
        served_model_name=served_model_name,
        max_logprobs=max_logprobs,
    )


@cli.command()
def auction(
    query: Annotated[str, typer.Argument(help="The user's query.")],
    advertiser: Annotated[
        list[str] | None,
        typer.Option("--advertiser", "-a", help="id:Name:description (repeatable)."),
    ] = None,
    url: Annotated[str | None, typer.Option(help="A running gateway; default: run in process.")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="MOSAIC_API_KEY", help="Bearer token.")] = None,
    candidates: Annotated[int | None, typer.Option("--candidates", "-m", help="M.")] = None,
    proposal: Annotated[str, typer.Option(help="context, reference or mixture.")] = "context",
    tau: Annotated[float | None, typer.Option(help="Weight on the user.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Reply length limit.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for replay.")] = None,
    model: Annotated[str | None, typer.Option(help="In-process worker's model.")] = None,
    show_candidates: Annotated[bool, typer.Option(help="Print the candidate table.")] = False,
) -> None:
    """Run one auction and print the reply and a payments table."""
    from app.cli_auction import run_auction_command

    raise typer.Exit(
        run_auction_command(
            query=query,
            advertisers=advertiser or [],
            url=url,
            api_key=api_key,
            candidates=candidates,
            proposal=proposal,
            tau=tau,
            max_tokens=max_tokens,
            seed=seed,
            model=model,
            show_candidates=show_candidates,
        )
    )


@cli.command()
def calibrate(
    advertiser_json: Annotated[
        Path | None, typer.Option(help="JSON file: id, name, description, instruction, value_scale.")
    ] = None,
    campaign: Annotated[str | None, typer.Option(help="A campaign's id (GET /campaigns/{id}).")] = None,
    queries: Annotated[
        Path | None,
        typer.Option(help="JSON / JSON Lines of queries or {query, advertisers} (default: the paper's)."),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Use the first N queries.")] = None,
    target_cpm: Annotated[
        float | None, typer.Option(help="Target cost per 1,000 auctions, currency units (e.g. 5.00).")
    ] = None,
    competitors: Annotated[
        bool, typer.Option(help="Put each query's advertisers in her auctions (default: she is alone).")
    ] = False,
    gateway: Annotated[str | None, typer.Option(help="A running gateway; default: run in process.")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="MOSAIC_API_KEY", help="Bearer token.")] = None,
    proposal: Annotated[str, typer.Option(help="context (the auctions' default), reference or mixture.")] = (
        "context"
    ),
    candidates: Annotated[int | None, typer.Option("--candidates", "-m", help="M per test auction.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Reply length limit.")] = None,
    tau: Annotated[float | None, typer.Option(help="Weight on the user (default: the paper's).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the first test auction (+1 per query).")] = None,
    model: Annotated[str | None, typer.Option(help="In-process worker's model.")] = None,
) -> None:
    """What to bid: expected cost per auction and per 1,000 by value scale (test auctions, never billed)."""
    from app.cli_calibrate import AuctionOptions, run_calibrate_command

    raise typer.Exit(
        run_calibrate_command(
            advertiser_json=advertiser_json,
            campaign=campaign,
            queries=queries,
            limit=limit,
            target_cpm=target_cpm,
            options=AuctionOptions(
                proposal=proposal,
                candidates=candidates,
                max_tokens=max_tokens,
                tau=tau,
                seed=seed,
                competitors=competitors,
            ),
            url=gateway,
            api_key=api_key,
            model=model,
        )
    )


@cache_cli.command("list")
def cache_list() -> None:
    """Print the cache's entries (SmolLM2 conversions, the vLLM side venv) and their sizes."""
    from workers.cache import cache_root, entries

    found = entries()
    for path, size in found:
        typer.echo(f"{size / 1e6:10.1f} MB  {path}")
    typer.echo(f"{sum(s for _, s in found) / 1e6:10.1f} MB  total in {cache_root()}")


@cache_cli.command("clean")
def cache_clean() -> None:
    """Remove every cache entry; the next worker start converts SmolLM2 again (~25 s)."""
    from workers.cache import cache_root, clean

    freed = clean()
    typer.echo(f"removed {freed / 1e6:.1f} MB from {cache_root()}")


@ledger_cli.command("consume")
def ledger_consume(
    consumer_name: Annotated[str | None, typer.Option(help="Consumer name (default: host-pid).")] = None,
) -> None:
    """Apply billing events from the stream exactly once (runs until stopped)."""
    from app.ledger.commands import run_consumer_forever
    from app.settings import Settings

    run_consumer_forever(Settings(), consumer_name=consumer_name)


@archive_cli.command("migrate")
def archive_migrate() -> None:
    """Apply the archive's pending SQL migrations to ARCHIVE_DSN."""
    from app.archive.commands import migrate_command
    from app.settings import Settings

    typer.echo(f"applied: {migrate_command(Settings()) or 'nothing (schema current)'}")


@archive_cli.command("run")
def archive_run() -> None:
    """Archive audit records from Redis to PostgreSQL, then drop them from Redis (runs until stopped)."""
    from app.archive.commands import run_forever
    from app.settings import Settings

    run_forever(Settings())


@archive_cli.command("retention")
def archive_retention(days: Annotated[int, typer.Option(min=1, help="Keep the last N days.")]) -> None:
    """Drop the archive's day partitions that ended more than N days ago."""
    from app.archive.commands import retention_command
    from app.settings import Settings

    typer.echo(f"dropped: {retention_command(Settings(), days) or 'nothing'}")


@ledger_cli.command("reconcile")
def ledger_reconcile() -> None:
    """Recompute every balance from the event history; exit 1 on any difference."""
    from app.archive.commands import archived_records
    from app.ledger.commands import reconcile_command
    from app.settings import Settings

    settings = Settings()  # with ARCHIVE_DSN the archived records are checked too (issue 36)
    archive = (lambda: archived_records(settings)) if settings.archive_dsn else None
    raise typer.Exit(reconcile_command(settings, archive))


@cli.command()
def evaluate(
    instances: Annotated[Path, typer.Option(help="JSONL of {query, advertisers}.")],
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("out/evaluate"),
    seeds: Annotated[int, typer.Option(help="Seeds per instance.")] = 3,
    candidates: Annotated[str, typer.Option(help="Comma-separated M values.")] = "1,2,4,8,16",
    proposals: Annotated[str, typer.Option(help="Comma-separated proposals.")] = "context,reference",
    tau: Annotated[str | None, typer.Option(help="Comma-separated τ values (default: the paper's).")] = None,
    limit: Annotated[int | None, typer.Option(help="Use the first N instances.")] = 8,
    max_tokens: Annotated[int, typer.Option(help="Reply length limit.")] = 48,
    url: Annotated[str | None, typer.Option(help="A running gateway's worker URLs; default: in process.")] = (
        None
    ),
    model: Annotated[str, typer.Option(help="In-process worker's model.")] = "smollm2",
    resume: Annotated[
        bool, typer.Option(help="Reuse finished (instance, seed, proposal) units cached in OUT/cache.")
    ] = True,
) -> None:
    """Reproduce the paper's experiments (Figures 1-3, C.5-C.8) with plots and a report."""
    from app.evaluation.run import run_evaluation

    run_evaluation(
        instances=instances,
        out=out,
        seeds=seeds,
        candidates=[int(m) for m in candidates.split(",")],
        proposals=proposals.split(","),
        taus=[float(t) for t in tau.split(",")] if tau else None,
        limit=limit,
        max_tokens=max_tokens,
        url=url,
        model=model,
        resume=resume,
    )


@cli.command()
def compare(
    instances: Annotated[Path, typer.Option(help="JSONL of {query, advertisers}.")],
    out: Annotated[
        Path, typer.Option(help="Output directory (its cache/ is shared with `evaluate`).")
    ] = Path("out/compare"),
    seeds: Annotated[int, typer.Option(help="Seeds per instance.")] = 3,
    candidates: Annotated[str, typer.Option(help="Comma-separated M values.")] = "1,2,4,8,16",
    proposals: Annotated[str, typer.Option(help="Comma-separated proposals.")] = "context,reference",
    mechanisms: Annotated[str | None, typer.Option(help="Comma-separated mechanisms (default: all).")] = None,
    limit: Annotated[int | None, typer.Option(help="Use the first N instances.")] = 8,
    max_tokens: Annotated[int, typer.Option(help="Reply length limit.")] = 48,
    optimise_evaluations: Annotated[
        int, typer.Option(help="Powell evaluations per advertiser in the misreport search (0: none).")
    ] = 200,
    url: Annotated[str | None, typer.Option(help="Worker URLs; default: an in-process worker.")] = None,
    model: Annotated[str, typer.Option(help="In-process worker's model.")] = "smollm2",
    cache_from: Annotated[
        Path | None, typer.Option(help="Reuse another output directory's cache/ (e.g. an `evaluate` run's).")
    ] = None,
    beside: Annotated[
        list[Path] | None,
        typer.Option(help="Another model's compare output directory to report beside this run (repeatable)."),
    ] = None,
) -> None:
    """MOSAIC beside no-ads, best-of-M + VCG, first-price and a segment auction, on the same candidates."""
    from app.comparison.run import run_comparison

    summary = run_comparison(
        instances,
        out,
        seeds=seeds,
        candidates=[int(m) for m in candidates.split(",")],
        proposals=proposals.split(","),
        mechanisms=mechanisms.split(",") if mechanisms else None,
        limit=limit,
        max_tokens=max_tokens,
        url=url,
        model=model,
        optimise_evaluations=optimise_evaluations,
        cache_from=cache_from,
        beside=beside,
    )
    typer.echo(
        f"{len(summary.frame)} rows; report: {summary.out / 'compare.md'} ({summary.wall_seconds:.1f} s)"
    )


@cli.command("compare-report")
def compare_report(
    out: Annotated[Path, typer.Option(help="A `mosaic compare` output directory (its compare.csv).")] = Path(
        "out/compare"
    ),
    beside: Annotated[
        list[Path] | None,
        typer.Option(help="Another model's compare output directory to add beside it (repeatable)."),
    ] = None,
) -> None:
    """Redraw a `mosaic compare` report and its figures from its compare.csv (nothing drawn or resolved)."""
    from app.comparison.run import rewrite_report

    files = rewrite_report(out, beside)
    typer.echo(f"{len(files)} files written; report: {out / 'compare.md'}")


@cli.command()
def verify(
    auction_id: Annotated[str | None, typer.Argument(help="The auction to check (read from --url).")] = None,
    url: Annotated[
        str | None, typer.Option(help="The gateway (its record and /.well-known/mosaic-keys).")
    ] = None,
    api_key: Annotated[str | None, typer.Option(envvar="MOSAIC_API_KEY", help="Bearer token.")] = None,
    record: Annotated[Path | None, typer.Option(help="A saved record (GET /auctions/{id}) to check.")] = None,
    keys: Annotated[Path | None, typer.Option(help="The public keys: a JWK set or PEM file.")] = None,
    rescore: Annotated[str | None, typer.Option(help="Re-score the candidates on this worker URL.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check an auction: signature, commitments, inclusion, allocation and payments. Exit 0/1/2."""
    from app.cli_verify import VerifyOptions, run_verify_command

    options = VerifyOptions(auction_id, url, api_key, record, keys, rescore)
    raise typer.Exit(run_verify_command(options, as_json=as_json))


@keys_cli.command("show")
def keys_show(
    directory: Annotated[Path | None, typer.Option(help="Key directory (default: SIGNING_KEY_DIR).")] = None,
) -> None:
    """Print the signing keys' JWK set (the active key and the retired ones)."""
    from app.cli_verify import keys_command

    raise typer.Exit(keys_command("show", directory))


@keys_cli.command("rotate")
def keys_rotate(
    directory: Annotated[Path | None, typer.Option(help="Key directory (default: SIGNING_KEY_DIR).")] = None,
) -> None:
    """Retire the active signing key (still served) and make a new one; restart the gateways."""
    from app.cli_verify import keys_command

    raise typer.Exit(keys_command("rotate", directory))


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
