"""Shared tokens: GitLab's X-Gitlab-Token (and GitLab's signing token, which is Standard
Webhooks), compared in constant time against every configured secret."""

from __future__ import annotations

import pytest

from tests.auth import support
from tests.auth.support import verifier
from webhook_worker.auth import AuthError
from webhook_worker.auth.standard_webhooks import sign

NOW = 1_700_000_000.0


def test_gitlab_token() -> None:
    v = verifier("gitlab", secret="glpat-ish-token")
    support.check(v, {"X-Gitlab-Token": "glpat-ish-token"}, b"{}", NOW)
    for wrong in ({"X-Gitlab-Token": "glpat-ish-tokeN"}, {"X-Gitlab-Token": ""}, {}):
        with pytest.raises(AuthError) as caught:
            support.check(v, wrong, b"{}", NOW)
        assert "glpat" not in str(caught.value)


def test_gitlab_rotation() -> None:
    v = verifier("gitlab", secrets=["new-token", "old-token"])
    support.check(v, {"X-Gitlab-Token": "old-token"}, b"{}", NOW)


def test_gitlab_signing_token_is_standard_webhooks() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    v = verifier("gitlab", type="standard_webhooks", secret=secret)
    sent = {
        "webhook-id": "ae6b9d4d-0b0c-4e9c-9e10-2c1f0b4c1a11",
        "webhook-timestamp": str(int(NOW)),
        "webhook-signature": sign(secret, "ae6b9d4d-0b0c-4e9c-9e10-2c1f0b4c1a11", int(NOW), b"{}"),
    }
    support.check(v, sent, b"{}", NOW)
    with pytest.raises(AuthError):
        support.check(v, {"X-Gitlab-Token": secret}, b"{}", NOW)


@pytest.mark.parametrize("sent", ["t\udc80ken", "tøken", "x" * 100_000])
def test_odd_token_values_are_auth_errors(sent: str) -> None:
    with pytest.raises(AuthError):
        support.check(verifier("gitlab", secret="token"), {"X-Gitlab-Token": sent}, b"", NOW)
