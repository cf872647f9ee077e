"""heartcli.redact: passwords in tracking URIs never reach the terminal."""

from __future__ import annotations

import json

from conftest import one_error, quick_args

# --------------------------------------------- moved here from tests/test_trust.py


PASSWORD = "S3cr3tPW"


QUICK = quick_args()  # the quick-start CNN, 1 epoch on the sample (conftest)


def test_password_in_a_tracking_uri_is_never_printed(heart, monkeypatch):
    uri = f"http://alice:{PASSWORD}@127.0.0.1:9"
    args = ["train", *QUICK, "--set", "tracking.enabled=true"]
    r = heart("--json", *args, "--set", f'tracking.uri="{uri}"', expect=1)
    assert PASSWORD not in r.stdout + r.stderr
    assert "http://***@127.0.0.1:9" in one_error(r.stderr)
    assert "***@127.0.0.1:9" in json.loads(r.stdout)["error"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # from the environment alone
    r = heart(*args, expect=1)
    assert PASSWORD not in r.stdout + r.stderr
    r = heart("config", "show", "--set", f'tracking.uri="{uri}"')
    assert PASSWORD not in r.stdout
