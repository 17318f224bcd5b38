"""`precompute` command line: run / info / verify / audit.

Every user error is one line ``error: …`` on stderr with exit status 2, never a traceback. An
error's detail (the lines after its first: key lists, PyTorch's own message, a recipe) is shown
with ``--verbose``.
"""

from __future__ import annotations

import sys

import click

from precompute.errors import ScopeError, UserError


def _fail(msg: str, verbose: bool = False) -> None:
    first, _, detail = msg.strip().partition("\n")
    click.echo(f"error: {first}", err=True)
    if verbose and detail:
        click.echo(detail, err=True)
    sys.exit(2)


def out_of_memory(e: BaseException) -> str | None:
    """One line for an allocation that failed anywhere (past the estimate of
    precompute/memory.py: a kernel's workspace, an SVD block, an address-space limit), with the
    allocator's numbers and what to lower; None for any other error. Finished tiles are on disk
    (each is written whole), so the same command resumes."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if not (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError"
            or "can't allocate memory" in text or "out of memory" in text.lower()):
        return None
    return (f"out of memory ({type(e).__name__}: {text[:160] or 'no detail'}); lower `batch`, "
            "the crop or the scale, or drop an analysis, then run the same command (finished "
            "tiles are kept)")


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (UserError, ScopeError) as e:
            # ScopeError: the model has an op the LinearScope cannot freeze faithfully (its
            # message names the op and the module path); nothing has been written yet.
            _fail(str(e), ctx.meta.get("verbose", False))
        except KeyboardInterrupt:
            click.echo("interrupted: finished tiles are on disk; run the same command to resume",
                       err=True)
            sys.exit(130)
        except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError is a RuntimeError
            message = out_of_memory(e)
            if message is None:
                raise
            _fail(message, ctx.meta.get("verbose", False))


@click.group(cls=_Group)
def main():
    """LinearScope precompute: compute and inspect linear-interpreter stores."""


def _verbose(command):
    """``--verbose``: show an error's detail lines (kept in ``ctx.meta`` for the group)."""
    def remember(ctx, _param, value):
        ctx.meta["verbose"] = value

    return click.option("--verbose", "-v", is_flag=True, expose_value=False, callback=remember,
                        is_eager=True, help="On an error, also print its detail.")(command)


@main.command()
@click.argument("config", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Print the plan (probes, passes, bytes, time) and exit.")
@click.option("--overwrite", is_flag=True,
              help="Discard an existing store made with a different value-affecting configuration "
                   "(a changed svd/classify: only that analysis).")
@click.option("--shard", metavar="I/N", default=None,
              help="Compute only share I of N of the tiles (default: RANK/WORLD_SIZE under torchrun).")
@click.option("--quiet", "-q", is_flag=True, help="No plan paragraph and no progress bars.")
@_verbose
def run(config, dry_run, overwrite, shard, quiet):
    """Compute the residual, columns and rows of CONFIG (YAML) into Zarr store(s).

    Several CONFIGs run one after the other in one process (one start-up for all), every one
    read and checked before any work. Safe to kill at any moment: the same command continues where it stopped.
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
@_verbose
def info(store):
    """Summarise STORE: provenance, checks, progress, size. Runs no code from the store."""
    from precompute.report import info_text

    click.echo(info_text(store))


@main.command()
@click.argument("store", type=click.Path(file_okay=False))
@click.option("--samples", default=8, show_default=True,
              help="Random columns and rows to recompute (each).")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--integrity-only", is_flag=True,
              help="Only check every chunk's checksum; load no model and run no code.")
@click.option("--trust-code", is_flag=True,
              help="Allow a store whose model is Python code (python:FILE:FUNC) to run it.")
@_verbose
def verify(store, samples, seed, device, integrity_only, trust_code):
    """Check every chunk of STORE against its checksum, then recompute a random sample of stored
    columns and rows from the recorded model and image and report the largest difference."""
    from precompute.verify import verify_store

    text, ok = verify_store(store, samples=samples, seed=seed, device=device,
                            integrity_only=integrity_only, trust_code=trust_code)
    click.echo(text)
    if not ok:
        sys.exit(1)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--device", default=None, help="Override the config's device.")
@_verbose
def audit(config, device):
    """List every call the LinearScope intercepts on CONFIG's model and (first) image (each
    run's, for a config with `runs:`).

    One line per call: order, module path, PyTorch op, call index within that (path, op), and the
    rule applied (freeze:/taylor: family, affine, linear). Nothing is written.
    """
    from collections import Counter

    from precompute import inputs
    from precompute.config import load_configs
    from precompute.interpreter import LinearInterpreter

    for res in load_configs(config):  # a `runs:` config: each run's model in turn
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
