"""The RADIUS client's pieces that need no server."""

from bng_operator.agent.radius.client import AUTHENTICATOR_POOL, Authenticators


def test_request_authenticators_are_16_bytes_and_never_repeat_across_refills() -> None:
    a = Authenticators()
    drawn = [a.next() for _ in range(3 * AUTHENTICATOR_POOL // 16 + 5)]
    assert {len(x) for x in drawn} == {16}
    assert len(set(drawn)) == len(drawn)
