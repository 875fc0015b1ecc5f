"""The command line: registered names listed, failures reported in one line naming step, input and cause."""
from editharm.cli import main


def test_list_prints_every_registry(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for expected in ("methods:", "rome", "regularizers:", "rect", "tasks:", "sst2", "model sources:", "pypi",
                     "dataset sources:", "embedded"):
        assert expected in out


def test_failure_names_command_input_and_cause(tmp_path, capsys):
    bad = tmp_path / "params.yaml"
    bad.write_text("sead: 1\n")
    log = tmp_path / "job.log"
    assert main(["--log", str(log), "validate", "--params", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "editharm validate failed" in err and "unknown key 'sead'" in err and str(bad) in err
    assert "Traceback" not in err  # the console gets one line; the job log gets the trace
    assert "Traceback" in log.read_text()
