import logging

from pomp_core import progress
from pomp_core.progress import Progress


def test_redirected_output_gets_log_lines_not_a_bar(capsys, caplog, monkeypatch):
    monkeypatch.setattr(progress, "interactive", lambda: False)
    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    with caplog.at_level(logging.INFO, logger="pomp_core.progress"):
        bar = Progress(total=10, desc="pomp", unit="step", every=20)
        for i in range(10):
            now[0] += 7  # a step every 7 s
            bar.set_postfix(loss=f"{i / 10:.3f}")
            bar.update(1)
        bar.close()
        bar.close()  # closing twice logs nothing more
    # a line once 20 s have passed since the last one (at 21, 42, 63 s), then the final count
    assert [r.getMessage() for r in caplog.records] == [
        "pomp: 3/10 step (30%), 0.143 step/s, ETA 0m49s, loss=0.200",
        "pomp: 6/10 step (60%), 0.143 step/s, ETA 0m28s, loss=0.500",
        "pomp: 9/10 step (90%), 0.143 step/s, ETA 0m07s, loss=0.800",
        "pomp: 10/10 step (100%), 0.143 step/s, loss=0.900",
    ]
    err = capsys.readouterr().err
    assert "\r" not in err


def test_iterating_logs_the_end_and_disable_is_silent(caplog, monkeypatch):
    monkeypatch.setattr(progress, "interactive", lambda: False)
    with caplog.at_level(logging.INFO, logger="pomp_core.progress"):
        assert list(Progress(range(5), desc="render", unit="class", every=1e9)) == list(range(5))
        assert list(Progress(range(3), desc="quiet", disable=True, every=0)) == [0, 1, 2]
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["render: 5/5 class (100%)"]


def test_a_terminal_gets_the_tqdm_bar(capsys, caplog, monkeypatch):
    monkeypatch.setattr(progress, "interactive", lambda: True)
    with caplog.at_level(logging.INFO, logger="pomp_core.progress"):
        for _ in Progress(range(4), desc="tiny CLIP", every=0):
            pass
    assert not caplog.records
    assert "tiny CLIP" in capsys.readouterr().err
