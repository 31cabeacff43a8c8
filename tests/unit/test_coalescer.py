"""serve's Coalescer: requests that arrive while the network is busy are forecast together, and each gets exactly
its own rows back (tests/integration/test_serve.py runs it under the real service)."""

from __future__ import annotations

import threading
import time

import pytest

from salesfc.serve import Coalescer, Forecasts


class Recorded:
    """A forecast that takes its time and records the batches it was given; row i's answer names its pair."""

    def __init__(self, seconds: float = 0.02, fail_on=None):
        self.batches: list[list] = []
        self.seconds, self.fail_on = seconds, fail_on
        self.lock = threading.Lock()

    def __call__(self, pairs: list) -> Forecasts:
        with self.lock:
            self.batches.append(list(pairs))
        time.sleep(self.seconds)
        if self.fail_on is not None and self.fail_on in pairs:
            raise RuntimeError(f"the database is away ({len(pairs)} rows)")
        return Forecasts(loaded="model", rows=[f"forecast of {pair}" for pair in pairs])


def run_together(coalescer: Coalescer, requests: list[list]) -> list:
    answers: list = [None] * len(requests)
    start = threading.Barrier(len(requests))

    def ask(i: int) -> None:
        start.wait()
        try:
            answers[i] = coalescer.run(requests[i])
        except RuntimeError as err:
            answers[i] = err
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return answers


def test_concurrent_requests_are_forecast_together_and_each_gets_its_own_rows():
    forecast = Recorded()
    requests = [[(i, 1), (i, 2)] if i % 2 else [(i, 1)] for i in range(16)]
    answers = run_together(Coalescer(forecast, max_rows=1000), requests)
    for pairs, answer in zip(requests, answers):
        assert answer.loaded == "model"
        assert answer.rows == [f"forecast of {pair}" for pair in pairs]
    # Every request was forecast once, and fewer passes than requests were made.
    assert sorted(p for batch in forecast.batches for p in batch) == sorted(p for r in requests for p in r)
    assert len(forecast.batches) < len(requests), forecast.batches


def test_one_request_at_a_time_is_forecast_at_once_alone():
    forecast = Recorded(seconds=0)
    coalescer = Coalescer(forecast, max_rows=1000)
    for i in range(3):
        assert coalescer.run([(i, 1)]).rows == [f"forecast of {(i, 1)}"]
    assert forecast.batches == [[(0, 1)], [(1, 1)], [(2, 1)]]


def test_a_batch_holds_at_most_max_rows_but_always_one_request():
    forecast = Recorded()
    requests = [[(i, d) for d in range(1, 4)] for i in range(8)] + [[(99, d) for d in range(1, 11)]]
    answers = run_together(Coalescer(forecast, max_rows=6), requests)
    assert all(len(batch) <= 6 for batch in forecast.batches if len(batch) != 10)
    assert [(99, d) for d in range(1, 11)] in forecast.batches  # larger than max_rows: alone
    assert all(answer.rows == [f"forecast of {p}" for p in pairs] for pairs, answer in zip(requests, answers))


def test_a_failed_pass_fails_every_request_of_its_batch_and_no_other():
    forecast = Recorded(fail_on=(3, 1))
    sizes = []
    coalescer = Coalescer(forecast, max_rows=1000, on_batch=sizes.append)
    requests = [[(i, 1)] for i in range(10)]
    answers = run_together(coalescer, requests)
    failed_batch = next(batch for batch in forecast.batches if (3, 1) in batch)
    for pairs, answer in zip(requests, answers):
        if pairs[0] in failed_batch:
            assert isinstance(answer, RuntimeError) and "database is away" in str(answer)
        else:
            assert answer.rows == [f"forecast of {pairs[0]}"]
    assert sizes == [len(batch) for batch in forecast.batches]
    # The next request is answered: a failure leaves the coalescer idle.
    assert coalescer.run([(42, 1)]).rows == ["forecast of (42, 1)"]


@pytest.mark.parametrize("threads", [2, 32])
def test_no_request_is_left_waiting(threads):
    forecast = Recorded(seconds=0.001)
    coalescer = Coalescer(forecast, max_rows=3)
    answers = run_together(coalescer, [[(i, 1), (i, 2)] for i in range(threads)])
    assert all(answer is not None and len(answer.rows) == 2 for answer in answers)


def test_closing_answers_what_is_queued_then_refuses_with_503():
    from salesfc.serve import Unavailable

    forecast = Recorded(seconds=0.05)
    coalescer = Coalescer(forecast, max_rows=1)
    futures = [coalescer.submit([(i, 1)]) for i in range(4)]
    coalescer.close()
    assert [f.result(timeout=5).rows for f in futures] == [[f"forecast of {(i, 1)}"] for i in range(4)]
    with pytest.raises(Unavailable, match="stopping"):
        coalescer.submit([(9, 1)])
