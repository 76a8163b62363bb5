"""``lore demo``: the embedded main job on a simulated population (no network, no files)."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console

from lore_rm.cli.common import (
    ACTIVE_BATCH,
    THREADS,
    active_option,
    one_line_errors,
    parse_int_list,
    use_threads,
)
from lore_rm.cli.fit_options import fit_options
from lore_rm.cli.rerun import as_list_text, config_option, to

DEMO_KEYS = {
    "seed": to("seed"),
    "ranks": to("ranks", as_list_text),
    "recipe": to("recipe"),
    "shots": to("shots", as_list_text),
    "trials": to("trials"),
    "active": to("active"),
    "active_batch": to("active_batch"),
    "population": lambda pop: {
        k: pop[k] for k in ("d", "true_rank", "n_seen", "n_unseen") if k in pop
    },
}


@one_line_errors
@fit_options()
@config_option("demo", DEMO_KEYS)
def demo(
    out: Path = typer.Option(Path("lore-demo"), help="Folder for the report, plots and config."),
    seed: int = typer.Option(0, help="Seed for the population and every fit."),
    ranks: str = typer.Option("0..6", help="Ranks to fit, e.g. '0..6' or '0,1,5'."),
    recipe: str = typer.Option("default", help="'default' (lore-rm) or 'paper' (published)."),
    shots: str = typer.Option("1,2,5,10,20", help="Shots per new user for the shots sweep."),
    trials: int = typer.Option(5, help="Random draws of the shots per shots value."),
    active: int = active_option(10),
    active_batch: int = ACTIVE_BATCH,
    n_seen: int = typer.Option(200, help="Seen users in the simulated population."),
    n_unseen: int = typer.Option(100, help="Unseen (new) users."),
    d: int = typer.Option(32, help="Embedding dimension."),
    true_rank: int = typer.Option(4, help="Rank of the planted reward basis."),
    threads: str = THREADS,
    progress: bool = typer.Option(True, help="Show progress bars."),
    fit_settings: dict | None = None,
) -> None:
    """Simulate a population, fit ranks, personalise new users, report against the oracle.

    The population has a planted low-rank reward, so the best achievable accuracy is known.
    Prints the four standard numbers per rank, a shots sweep and an active-learning curve
    (questions picked by expected information gain vs at random), and writes report.json,
    ranks.csv, shots.csv, ranks.png, shots.png, active.csv, active.png and config.json to OUT.
    """
    from lore_rm.cli.fit import print_personalization
    from lore_rm.evaluate.protocols import run_protocol
    from lore_rm.evaluate.report import (
        active_calibration_table,
        active_table,
        check_report_out,
        print_tables,
        rank_table,
        shots_table,
        write_sweep_report,
    )
    from lore_rm.evaluate.simulate import PopulationConfig, simulate_population

    console = Console()
    n_threads = use_threads(threads)
    rank_list = parse_int_list(ranks, "--ranks")
    shot_list = parse_int_list(shots, "--shots")
    fewshot_pool = max(20, max(shot_list), active)
    config = {
        "command": "demo",
        "seed": seed,
        "ranks": rank_list,
        "recipe": recipe,
        "shots": shot_list,
        "trials": trials,
        "active": active,
        "active_batch": active_batch,
        "settings": dict(fit_settings or {}),
        "threads": n_threads,
    }
    t0 = time.perf_counter()
    check_report_out(out)
    pop_cfg = PopulationConfig(
        d=d,
        true_rank=true_rank,
        n_seen=n_seen,
        n_unseen=n_unseen,
        fewshot_per_user=fewshot_pool,
        seed=seed,
    )
    pop = simulate_population(pop_cfg)
    config["population"] = pop.to_dict()["population"]
    console.print(
        f"[bold]Simulated population[/]: {n_seen} seen + {n_unseen} new users, d = {d}, "
        f"true rank {true_rank}; oracle unseen-user accuracy "
        f"{pop.oracle['unseen_test']:.3f} (chance 0.5)"
    )
    result = run_protocol(
        pop.split,
        rank_list,
        shots=shot_list,
        trials=trials,
        recipe=recipe,  # type: ignore[arg-type]  # checked by FitConfig.for_recipe
        seed=seed,
        progress=progress,
        active=active,
        active_batch=active_batch,
        **(fit_settings or {}),
    )
    rows, best, shot_rows = result.rows, result.selected, result.shot_rows
    elapsed = time.perf_counter() - t0

    print_tables(rank_table(rows, pop.oracle, f"lore demo — recipe '{recipe}'"), console=console)
    if shot_rows:
        print_tables(shots_table(shot_rows), console=console)
    if result.active_rows:
        print_tables(
            active_table(result.active_rows),
            active_calibration_table(result.active_rows),
            console=console,
        )
    if result.personalization is not None:
        print_personalization(result.personalization, console)
    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    config["notes"] = result.notes
    extra: dict = {"seconds": round(elapsed, 2)}
    if best is not None:
        gap = (best["unseen_test"] - 0.5) / max(pop.oracle["unseen_test"] - 0.5, 1e-9)
        extra["gap_closed_unseen"] = gap
        console.print(
            f"Selected rank {best['rank']} (smallest within 0.005 of the best seen-user test "
            f"accuracy): unseen-user accuracy "
            f"{best['unseen_test']:.3f} closes {100 * gap:.0f}% of the chance-to-oracle gap."
        )
    names = write_sweep_report(
        out,
        rows=rows,
        shot_rows=shot_rows,
        config=config,
        oracle=pop.oracle,
        title=f"Simulated population (recipe '{recipe}')",
        extra=extra,
        active_rows=result.active_rows,
        personalization=result.personalization,
        selected_rank=best["rank"] if best else None,
    )
    console.print(f"Wrote {out}/: {' '.join(names)} ({elapsed:.1f} s)")
