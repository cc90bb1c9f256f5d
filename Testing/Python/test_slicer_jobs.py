"""The module's request worker: one persistent thread, progress while running, errors and cancel handed back."""
import threading

from slicer_fixtures import MODULE_DIR  # noqa: F401  (puts MedalSLib on sys.path)

from MedalSLib.jobs import Progress, Worker


def test_requests_run_in_order_on_one_thread_that_is_not_the_callers():
    worker = Worker()
    threads, order = [], []

    def work(name):
        def run(request):
            threads.append(threading.get_ident())
            order.append(name)
            return name.upper()
        return run

    requests = [worker.submit(work(name), name) for name in ("a", "b", "c")]
    for request in requests:
        assert request.finished.wait(5)
    assert [r.result for r in requests] == ["A", "B", "C"] and order == ["a", "b", "c"]
    assert len(set(threads)) == 1 and threads[0] != threading.get_ident()
    worker.close()


def test_progress_is_visible_while_the_work_runs():
    worker = Worker()
    reported, release = threading.Event(), threading.Event()

    def run(request):
        request.report(Progress("Coarse stage: 1 of 4 windows", 0.25))
        reported.set()
        release.wait(5)

    request = worker.submit(run, "segment")
    assert reported.wait(5)
    assert request.progress == Progress("Coarse stage: 1 of 4 windows", 0.25) and not request.finished.is_set()
    release.set()
    assert request.finished.wait(5)
    worker.close()


def test_an_error_is_handed_back_and_the_worker_goes_on():
    worker = Worker()
    failing = worker.submit(lambda request: 1 / 0, "bad")
    after = worker.submit(lambda request: "still here", "good")
    assert after.finished.wait(5) and failing.finished.is_set()
    assert isinstance(failing.error, ZeroDivisionError) and failing.result is None
    assert after.result == "still here" and after.error is None
    worker.close()


def test_cancel_reaches_the_running_work():
    worker = Worker()
    started = threading.Event()

    def run(request):
        started.set()
        return request.cancel_requested.wait(5)

    request = worker.submit(run, "long")
    assert started.wait(5)
    request.cancel()
    assert request.finished.wait(5) and request.result is True
    worker.close()


def test_close_ends_the_thread():
    worker = Worker()
    worker.close()
    assert not worker.alive
