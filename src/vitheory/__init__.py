"""vitheory: the theory of Vision Transformers as experiments you can run, check and extend.

Public API (a notebook can call these; the ``vitheory`` command line is a thin layer over them)::

    import vitheory
    vitheory.list_experiments()                      # name -> Experiment (paper, figure, claim)
    df = vitheory.run("sample-complexity", scale="smoke", overrides={"L": 24})  # one row per trial
    df = vitheory.run("sample-complexity", out="runs/sc")   # run folder with SQLite, figures, report
    df = vitheory.run("sample-complexity", out="runs/sc", executor="dask")   # the same, on a Dask cluster
    vitheory.report("runs/sc")                       # rebuild the report from stored results
"""
from vitheory._version import __version__  # noqa: F401  (the package version)
# the subpackage vitheory.report first: importing it later (e.g. vitheory.report.build) would otherwise replace
# the function vitheory.report below by the module of the same name
import vitheory.report as _report_package  # noqa: F401,E402


def list_experiments():
    from vitheory.experiments.base import registry
    return registry()


def run(name, *, scale="default", overrides=None, seeds=None, out=None, device="auto", progress=True,
        executor="local", scheduler=None, workers=None):
    """Run an experiment (resuming in ``out``); with ``out`` also write its report.  One row per trial.

    ``executor="dask"`` runs the batches on a Dask cluster: the one at ``scheduler`` (e.g. ``"tcp://host:8786"``),
    or, without it, a LocalCluster on 127.0.0.1 with ``workers`` processes (default: one per core) that is
    stopped at the end.  The stored results are the same whichever executor ran them."""
    from vitheory.report.build import build_report
    from vitheory.sweep.runner import run_experiment
    df = run_experiment(name, scale=scale, overrides=overrides, seeds=seeds, out=out, device=device,
                        progress=progress, executor=executor, scheduler=scheduler, workers=workers)
    if out is not None:
        build_report(out)
    return df


def report(path):
    from vitheory.report.build import rebuild
    return rebuild(path)


def load_results(run_dir):
    """The one-row-per-trial DataFrame stored in a run folder."""
    from vitheory.report.build import load_run
    return load_run(run_dir)[2]
