"""Bad input on the command line ends in one `error: ...` line, never a traceback (issue 15, finding 5).

Each case runs the console-script entry point (`fastslow.cli.main`) in this process with
``sys.argv`` set, as the installed ``fastslow`` command does, and checks the exit status and
what reached stderr.
"""

from __future__ import annotations

import sys

import pytest

from fastslow.cli import main

RETAIL = "/work/shared/data/online-retail-ii/events.csv.gz"


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["fastslow", *args])
    monkeypatch.delenv("FASTSLOW_LOG_LEVEL", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip() and " INFO " not in line]


def test_unknown_policy_is_a_one_line_usage_error(monkeypatch, capsys, tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp\nu1,i1,1714564800\n")
    code, err = run_main(monkeypatch, capsys, "replay", str(log), "-p", "nonexistent")
    assert code == 2
    assert error_lines(err) == [error_lines(err)[0]] and error_lines(err)[0].startswith("error: ")
    assert "--policy='nonexistent'" in err and "fast-slow" in err   # says what was wrong and what is allowed
    assert "Traceback" not in err


@pytest.mark.parametrize("name, reason", [("missing.csv", "does not exist"), ("README.md", "unknown format")])
def test_an_unusable_log_is_a_one_line_usage_error(monkeypatch, capsys, tmp_path, name, reason):
    path = tmp_path / name
    if name == "README.md":
        path.write_text("# not an event log\n")
    code, err = run_main(monkeypatch, capsys, "produce", str(path), "--bootstrap-servers", "127.0.0.1:1")
    assert code == 2
    assert error_lines(err) == [f"error: {path}: " + err.split(f"{path}: ", 1)[1].strip()]
    assert reason in err and "Traceback" not in err


def test_a_failure_that_is_not_a_usage_error_exits_1(monkeypatch, capsys):
    import fastslow.cli as cli
    from fastslow.errors import ServiceError

    monkeypatch.setattr(cli.app, "registered_commands", list(cli.app.registered_commands))

    @cli.app.command("explode")
    def explode() -> None:
        raise ServiceError("tansu broker", "exited with status 1", "see its log")

    code, err = run_main(monkeypatch, capsys, "explode")
    assert (code, error_lines(err)) == (1, ["error: tansu broker: exited with status 1 (see its log)"])


def test_click_usage_errors_are_one_line_too(monkeypatch, capsys):
    code, err = run_main(monkeypatch, capsys, "replay")
    assert (code, error_lines(err)) == (2, ["error: Missing argument 'events'. (see `fastslow replay --help`)"])
    code, err = run_main(monkeypatch, capsys, "no-such-command")
    assert code == 2 and error_lines(err)[0].startswith("error: No such command")


def test_debug_log_level_adds_the_traceback(monkeypatch, capsys, tmp_path):
    code, err = run_main(monkeypatch, capsys, "--log-level", "DEBUG", "produce", str(tmp_path / "missing.csv"),
                         "--bootstrap-servers", "127.0.0.1:1")
    assert code == 2
    assert "Traceback (most recent call last)" in err and "EventFileError" in err
    assert err.rstrip().splitlines()[-1].startswith("error: ")   # the one-line message still ends it


def test_a_bad_log_level_is_a_usage_error(monkeypatch, capsys):
    code, err = run_main(monkeypatch, capsys, "--log-level", "LOUD", "models")
    assert code == 2 and "--log-level" in err and "Traceback" not in err
