"""`precompute` command line: run / info / verify / audit.

Every user error is one line ``error: …`` on stderr with exit status 2, never a traceback.
"""

from __future__ import annotations

import sys

import click

from precompute.config import UserError
from precompute.scope import ScopeError


def _fail(msg: str) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(2)


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (UserError, ScopeError) as e:
            # ScopeError: the model has an op the LinearScope cannot freeze faithfully (its
            # message names the op and the module path); nothing has been written yet.
            _fail(str(e))
        except KeyboardInterrupt:
            click.echo("interrupted: finished tiles are on disk; run the same command to resume",
                       err=True)
            sys.exit(130)


@click.group(cls=_Group)
def main():
    """LinearScope precompute: compute and inspect linear-interpreter stores."""


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Print the plan (probes, passes, bytes, time) and exit.")
@click.option("--overwrite", is_flag=True,
              help="Discard an existing store made with a different value-affecting configuration.")
@click.option("--shard", metavar="I/N", default=None,
              help="Compute only share I of N of the tiles (default: RANK/WORLD_SIZE under torchrun).")
@click.option("--quiet", "-q", is_flag=True, help="No plan paragraph and no progress bars.")
def run(config, dry_run, overwrite, shard, quiet):
    """Compute the residual, columns and rows of CONFIG (YAML) into Zarr store(s).

    Safe to kill at any moment: the same command continues where it stopped.
    Configuration keys: docs/RUN.md; the store layout: docs/FORMAT.md.
    """
    from precompute import run as runner

    share = runner.parse_shard(shard)
    if shard is None and share[0] != 0:
        quiet = True  # under torchrun only rank 0 prints the plan and progress bars
    opts = runner.Options(overwrite=overwrite, dry_run=dry_run, shard=share, quiet=quiet)
    for line in runner.run(config, opts):
        click.echo(line)


@main.command()
@click.argument("store", type=click.Path(file_okay=False))
def info(store):
    """Summarise STORE: provenance, checks, progress, size."""
    from precompute.store import info_text

    click.echo(info_text(store))


@main.command()
@click.argument("store", type=click.Path(file_okay=False))
@click.option("--samples", default=8, show_default=True,
              help="Random columns and rows to recompute (each).")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
def verify(store, samples, seed, device):
    """Recompute a random sample of stored columns and rows and report the maximum difference."""
    from precompute.verify import verify_store

    text, ok = verify_store(store, samples=samples, seed=seed, device=device)
    click.echo(text)
    if not ok:
        sys.exit(1)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--device", default=None, help="Override the config's device.")
def audit(config, device):
    """List every call the LinearScope intercepts on CONFIG's model and (first) image.

    One line per call: order, module path, PyTorch op, call index within that (path, op), and the
    rule applied (freeze:/taylor: family, affine, linear). Nothing is written.
    """
    from collections import Counter

    from precompute import inputs
    from precompute.config import load_config
    from precompute.interpreter import LinearInterpreter

    res = load_config(config)
    image = res.images[0]
    dev = inputs.resolve_device(device or res.config.device)
    prep = inputs.prepare(res.as_dict(image), res.config_path.parent, dev)
    li = LinearInterpreter(prep.spec.module, prep.x0, rule=res.config.interpreter, batch=1,
                           exact=res.config.precision == "ieee")
    records = li.audit()
    click.echo(f"# {prep.spec.model_id} on {image.name}, x0 {tuple(prep.x0.shape[1:])}, "
               f"interpreter {res.config.interpreter}: {len(records)} intercepted calls")
    click.echo("#  order  module path  op  call  rule")
    for record in records:
        click.echo(str(record))
    counts = Counter(r.rule for r in records)
    click.echo("# " + ", ".join(f"{rule}: {n}" for rule, n in sorted(counts.items())))


if __name__ == "__main__":  # pragma: no cover
    main()
