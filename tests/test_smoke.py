"""The quickest end-to-end check: one link, one request, one matched response."""

from iso8583.specs import default as spec

import geviso


def test_send_returns_the_matching_response(echo_host):
    with geviso.Connection(echo_host.address, spec, send_timeout=5) as conn:
        response = conn.send({"t": "0800", "70": "301"})
    assert response["t"] == "0810"
    assert response["39"] == "00"
    assert response["11"] == "000001"
