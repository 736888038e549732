"""The public API a notebook user discovers: dir(), tab completion and lazy imports."""

import subprocess
import sys

import clusterprobe


def test_every_export_is_listed_and_resolves():
    listed = dir(clusterprobe)
    for name in clusterprobe.__all__:
        assert name in listed
        assert getattr(clusterprobe, name) is not None
    assert {"extract_features", "evaluate", "MetricSettings", "ReportSettings", "build_report",
            "TrainConfig", "train", "FeatureBank", "load_checkpoint"} <= set(listed)


def test_train_is_the_function_even_after_the_trainer_package_is_imported():
    import clusterprobe.trainer
    from clusterprobe.trainer import train

    assert clusterprobe.train is train and callable(clusterprobe.train)
    from clusterprobe import train as again

    assert again is train


def test_tab_completion_offers_the_exports():
    import rlcompleter

    completer = rlcompleter.Completer({"clusterprobe": clusterprobe})
    offered = {completer.complete("clusterprobe.Met", i) for i in range(3)} - {None}
    assert offered == {"clusterprobe.MetricSettings(", "clusterprobe.MetricsError("}


def test_import_stays_light_until_a_name_is_used():
    code = "import sys, clusterprobe; print('torch' in sys.modules, 'faiss' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["False", "False"], result.stderr


def test_every_error_a_caller_catches_is_exported_at_the_top_level():
    import inspect

    from clusterprobe import errors

    public = {name for name, value in vars(errors).items()
              if inspect.isclass(value) and issubclass(value, (errors.ClusterprobeError, Warning))
              and value.__module__ == errors.__name__}
    assert {"LockedError", "OutputPathError", "DatasetError", "FeatureBankError", "AssumptionWarning"} <= public
    assert public <= set(clusterprobe.__all__), sorted(public - set(clusterprobe.__all__))
    for name in public:
        assert getattr(clusterprobe, name) is getattr(errors, name)
    from clusterprobe import LockedError, OutputPathError

    assert issubclass(LockedError, clusterprobe.ClusterprobeError) and LockedError("x", {"pid": 1}).holder == {"pid": 1}
    assert issubclass(OutputPathError, clusterprobe.ClusterprobeError)


def test_threads_limit_torch_blas_and_faiss_in_a_fresh_process(tmp_path):
    """--threads N (train, extract, metrics, report) caps every pool a command uses."""
    import subprocess
    import sys

    code = (
        "import torch, faiss, threadpoolctl\n"
        "from clusterprobe.devices import limit_threads\n"
        "limit_threads(1)\n"
        "pools = {p['internal_api']: p['num_threads'] for p in threadpoolctl.threadpool_info()}\n"
        "print(torch.get_num_threads(), faiss.omp_get_max_threads(), max(pools.values()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "2"}).stdout.split()
    assert out == ["1", "1", "1"]


def test_threads_option_is_on_every_heavy_command():
    from typer.testing import CliRunner

    from cli.main import app

    for command in ("train", "extract", "metrics"):
        result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert "--threads" in result.output, command
