"""The tablet library through its generated Python binding (UniFFI):
open a store, log in, sync, answer an item, sync again.

Usage: test_binding.py SERVER_URL STORE_DIR INSPECTION_ID USERNAME PASSWORD
Prints one JSON line at the end: {"answer": ..., "heads": [...]}.
"""

import json
import sys

import mobile_bridge as mb


class Recorder(mb.SyncListener):
    """Keeps what the sync reports."""

    def __init__(self):
        self.phases = []
        self.errors = []

    def on_progress(self, progress):
        self.phases.append(progress.phase)

    def on_error(self, message):
        self.errors.append(message)


def main():
    server, store, inspection, username, password = sys.argv[1:6]

    config = mb.default_tablet_config()
    config.http_timeout_ms = 20_000
    client = mb.FieldClient.open(store, config)
    assert client.session().state == mb.SessionState.LOGGED_OUT

    # Errors arrive as exceptions of the flat FieldError family.
    try:
        client.sync_now(None)
        raise AssertionError("sync without a login must fail")
    except mb.FieldError.NeedsLogin:
        pass
    try:
        client.login(server, username, "wrong password")
        raise AssertionError("a wrong password must fail")
    except mb.FieldError.InvalidCredentials:
        pass

    info = client.login(server, username, password)
    assert info.state == mb.SessionState.LOGGED_IN, info
    assert info.username == username, info

    recorder = Recorder()
    report = client.sync_now(recorder)
    assert report.documents >= 1, report
    assert mb.SyncPhase.DONE in recorder.phases, recorder.phases

    ids = [a.id for a in client.assignments()]
    assert inspection in ids, ids

    answer = client.answer(
        inspection, "A1", "có", {"so_ky_hieu": "12/KH-UBND"}, "ghi từ Python"
    )
    assert answer.value == "yes", answer
    try:
        client.answer(inspection, "A3", "60/50", {}, None)
        raise AssertionError("a numerator over its denominator must fail")
    except mb.FieldError.InvalidInput as e:
        assert "A3" in str(e), e

    pending = [d for d in client.status().documents if d.id == inspection][0]
    assert pending.pending_changes == 1, pending

    client.sync_now(recorder)
    status = client.status()
    doc = [d for d in status.documents if d.id == inspection][0]
    assert doc.pending_changes == 0, doc
    detail = client.inspection(inspection)
    a1 = [i for i in detail.items if i.id == "A1"][0]
    assert a1.answer is not None and a1.answer.value == "yes", a1
    assert a1.answer.fields == {"so_ky_hieu": "12/KH-UBND"}, a1.answer

    print(json.dumps({"answer": a1.answer.value, "heads": doc.heads}))


if __name__ == "__main__":
    main()
