"""``python -m clusterprobe.train ARGS`` == ``clusterprobe train ARGS``; for torchrun:
``torchrun --nproc_per_node 2 -m clusterprobe.train --config configs/demo_digits.yaml``."""

import typer

from cli.train import register


def main() -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(app)
    app()


if __name__ == "__main__":
    main()
