"""check's call to the forecast service (what `helm test` runs with serving.enabled), against a stand-in server that
answers what the test tells it to."""

from __future__ import annotations

import socket

import pytest
from local_http import JsonHandler, serve, stop

from salesfc.check import Failed, Retry, predict_problem

RUN = "train-abc"


def forecast(run_id=RUN, predicted=1234.5, error=None) -> dict:
    return {"run_id": run_id, "week": "2012-11-02", "forecasts": [
        {"store": 3, "dept": 7, "week": "2012-11-02", "predicted_sales": predicted,
         "feature_timestamp": "2012-11-02T00:00:00Z", "error": error}]}


@pytest.fixture
def service():
    """A server on 127.0.0.1 answering POST /predict with ``service.answer`` = (status, body)."""
    received: list[tuple[str, dict]] = []

    class Handler(JsonHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            received.append((self.path, self.read_json()))
            self.reply(*server.answer)

    server = serve(Handler)
    server.answer = (200, forecast())
    server.received = received
    server.url = f"http://127.0.0.1:{server.server_address[1]}/"
    yield server
    stop(server)


def test_a_forecast_from_the_expected_run_passes(service):
    seen = predict_problem(service.url, 3, 7, RUN)
    assert service.received == [("/predict", {"store": 3, "dept": 7})]
    assert "$1,234" in seen and RUN in seen and "store: 3, dept: 7" in seen


@pytest.mark.parametrize("answer, words", [
    ((503, {"detail": "no finished run yet"}), "503 {\"detail\": \"no finished run yet\"}"),
    ((200, forecast(run_id="train-old")), "answers with model train-old, not train-abc"),
])
def test_a_service_not_ready_yet_is_asked_again(service, answer, words):
    service.answer = answer
    with pytest.raises(Retry, match="POST .*/predict") as caught:
        predict_problem(service.url, 3, 7, RUN)
    assert words in str(caught.value)


@pytest.mark.parametrize("answer, words", [
    ((422, {"detail": [{"loc": ["body", "dept"]}]}), "HTTP 422, expected 200"),
    ((500, "Internal Server Error"), "HTTP 500, expected 200: Internal Server Error"),
    ((200, "<html>a proxy page</html>"), "200 but not a forecast answer"),
    ((200, {"run_id": RUN, "forecasts": []}), "200 but not a forecast answer"),
    ((200, forecast(predicted=None, error={"code": "stale_features", "message": "the online store does not hold"})),
     "no forecast, stale_features: the online store does not hold"),
    ((200, forecast(predicted=None)), "predicted_sales is None, not a number"),
])
def test_a_wrong_answer_fails_at_once_saying_what_came_back(service, answer, words):
    service.answer = answer
    with pytest.raises(Failed) as caught:
        predict_problem(service.url, 3, 7, RUN)
    assert words in str(caught.value)


def test_no_service_listening_is_asked_again():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(Retry, match=f"POST http://127.0.0.1:{port}/predict .*no answer .*serving.enabled"):
        predict_problem(f"http://127.0.0.1:{port}", 3, 7, RUN, timeout=2)
