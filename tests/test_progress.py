import io
import logging

from rich.console import Console

from ads_cli import progress


def test_nested_trackers_share_one_live_display_in_a_terminal(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=out, force_terminal=True, width=100))
    with progress.track("outer", total=2) as outer:
        for _ in range(2):
            with progress.track("inner", total=3) as inner:  # rich allows one live display: this must not raise
                inner.step(3)
            outer.step()
    assert progress._live is None
    assert "outer" in out.getvalue() and "2/2" in out.getvalue()


def test_plain_lines_when_not_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(progress, "console", Console(file=io.StringIO(), force_terminal=False))
    with progress.track("work", total=4, every=0.0) as t:
        t.step(2)
    assert "work: 2/4" in capsys.readouterr().err


def test_log_file_gets_everything(tmp_path):
    path = progress.setup_logging("stage", tmp_path / "logs")
    progress.log.debug("a detail")
    for handler in progress.log.handlers:
        handler.flush()
    assert "a detail" in path.read_text()
    assert progress.log.level == logging.DEBUG
