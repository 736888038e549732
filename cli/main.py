"""Entry point of the ``clusterprobe`` command. Each sub-command lives in its own module and
registers itself with ``register(app)``; every one of them is a thin wrapper of a library call."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="clusterprobe",
    help="Clustering properties of self-supervised representations, layer by layer (H, P0, P1, Z).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

from . import extract, metrics, report, train  # noqa: E402  (each registers its commands)

for _module in (extract, metrics, train, report):
    _module.register(app)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True)):
    if version:
        from clusterprobe import __version__

        typer.echo(__version__)
        raise typer.Exit()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
