"""The first Ctrl-C / SIGTERM asks the run to stop; a second one is left to kill the process."""

from __future__ import annotations

import os
import signal

from gpt2fast.interrupts import StopRequest, graceful_stop


def test_first_signal_requests_a_stop_and_restores_the_defaults():
    before = signal.getsignal(signal.SIGINT)
    heard = []
    with graceful_stop() as stop:
        stop.on_request(lambda: heard.append("stop"))
        assert not stop.requested and stop.exit_status() == 0
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal == signal.SIGTERM
        assert stop.exit_status() == 128 + signal.SIGTERM
        assert heard == ["stop"]
        assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is before


def test_listener_added_after_the_request_runs_at_once():
    stop = StopRequest()
    stop.request(signal.SIGINT)
    stop.request(signal.SIGTERM)
    heard = []
    stop.on_request(lambda: heard.append(1))
    assert heard == [1] and stop.signal == signal.SIGINT
