"""The Redis key layout is a wire contract: running processes and stored data depend on it."""

from webhook_worker.constants import RedisKeys


def test_redis_keys_are_the_documented_names() -> None:
    keys = RedisKeys("webhook-worker:prod")

    assert keys.prefix == "webhook-worker:prod"
    assert keys.stream == "webhook-worker:prod:events"
    assert keys.malformed == "webhook-worker:prod:events:malformed"
    assert keys.retry == "webhook-worker:prod:retry"
    assert keys.retry_hash("0192-abc") == "webhook-worker:prod:retry:0192-abc"
    assert keys.retry_hash_prefix == "webhook-worker:prod:retry:"
    assert keys.dedupe("github", "d-1:x") == "webhook-worker:prod:delivery:github:d-1:x"
    assert keys.gate("shop", "billing") == "webhook-worker:prod:gate:shop:billing"
    assert keys.gate_prefix == "webhook-worker:prod:gate:"
    assert keys.circuits == "webhook-worker:prod:circuits"
    # The ordering key comes last: it may hold ':' itself.
    assert (
        keys.order("shop", "billing", "cus:42") == "webhook-worker:prod:order:shop:billing:cus:42"
    )
    assert keys.order_prefix == "webhook-worker:prod:order:"
