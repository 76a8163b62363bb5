"""The ``lore`` command and its registry: one subcommand per job."""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    name="lore",
    help="Personalised reward models: a shared low-rank reward basis over frozen embeddings.",
    no_args_is_help=True,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        from lore_rm import __version__

        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """lore-rm: learn a shared low-rank reward basis and per-user weights (LoRe)."""


def _register() -> None:
    # Each job lives in its own module and registers itself here.
    from lore_rm.cli.data import data_app, prepare_app
    from lore_rm.cli.demo import demo

    app.command("demo")(demo)
    from lore_rm.cli.fit import evaluate_cmd, fit_cmd

    app.command("fit")(fit_cmd)
    app.command("evaluate")(evaluate_cmd)
    app.add_typer(prepare_app, name="prepare")
    app.add_typer(data_app, name="data")
    from lore_rm.cli.serve import export, serve

    app.command("serve")(serve)
    app.command("export")(export)

    from lore_rm.cli.embed import embed

    app.command("embed")(embed)

    from lore_rm.cli.rewardbench import rewardbench

    app.command("rewardbench")(rewardbench)
    from lore_rm.cli.benchmark import personalrewardbench

    app.command("personalrewardbench")(personalrewardbench)

    from lore_rm.cli.model import model_app
    from lore_rm.cli.score import score

    app.add_typer(model_app, name="model")
    app.command("score")(score)
    from lore_rm.cli.rank import rank

    app.command("rank")(rank)
    from lore_rm.cli.explain import explain_cmd

    model_app.command("explain")(explain_cmd)


_register()


def main() -> None:
    """The ``lore`` entry point. A command that reaches an optional module which is not
    installed ends in one line naming the extra to install (exit 2), not a traceback."""
    try:
        app()
    except ModuleNotFoundError as exc:
        from lore_rm.cli.common import print_error
        from lore_rm.extras import extra_for, missing_extra

        if extra_for(exc.name) is None:
            raise
        command = " ".join(["lore", *sys.argv[1:2]])
        print_error(missing_extra(command, str(exc.name), reason=str(exc)))
        raise SystemExit(2) from None
