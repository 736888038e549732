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
            "TrainConfig", "FeatureBank", "load_checkpoint"} <= set(listed)


def test_tab_completion_offers_the_exports():
    import rlcompleter

    completer = rlcompleter.Completer({"clusterprobe": clusterprobe})
    offered = {completer.complete("clusterprobe.Met", i) for i in range(3)} - {None}
    assert offered == {"clusterprobe.MetricSettings("}


def test_import_stays_light_until_a_name_is_used():
    code = "import sys, clusterprobe; print('torch' in sys.modules, 'faiss' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["False", "False"], result.stderr


def test_the_library_never_imports_the_command_line():
    code = ("import sys, pkgutil, importlib, clusterprobe\n"
            "for m in pkgutil.walk_packages(clusterprobe.__path__, 'clusterprobe.'):\n"
            "    if not m.name.endswith('__main__'): importlib.import_module(m.name)\n"
            "print(sorted(n for n in sys.modules if n == 'cli' or n.startswith('cli.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
