"""A client over mutual TLS: the host checks our certificate, we check the host's.

Run:  python examples/tls_client.py
      (makes a throwaway CA and certificates with trustme, starts a local TLS mock host)
Or:   python examples/tls_client.py --host HOST:PORT --ca ca.pem --cert client.pem --key client.key
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Optional

from iso8583.specs import default as spec

import geviso
from geviso import masking
from geviso.tls import client_context, server_context


def make_certs(folder: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (test only)."""
    import trustme  # a test dependency: real deployments bring their own PEM files

    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("terminal-0001@example.test")
    files = {
        "ca": ca.cert_pem,
        "server_cert": server.cert_chain_pems[0],
        "server_key": server.private_key_pem,
        "client_cert": client.cert_chain_pems[0],
        "client_key": client.private_key_pem,
    }
    paths = {}
    for name, blob in files.items():
        paths[name] = str(folder / f"{name}.pem")
        blob.write_to_path(paths[name])
    return paths


def talk(address: str, ca: str, cert: Optional[str], key: Optional[str]) -> None:
    tls = client_context(cafile=ca, certfile=cert, keyfile=key)
    with geviso.Connection(address, spec, tls=tls, send_timeout=5.0) as conn:
        sign_on = conn.send({"t": "0800", "70": "001"})
        print(f"sign-on over TLS: {masking.describe(sign_on)} code={sign_on['39']}")
        purchase = conn.send({"t": "0200", "2": "4111111111111111", "3": "000000", "4": "000000002500"})
        print(f"purchase: {masking.describe(purchase)} code={purchase['39']}")


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", help="HOST:PORT of a TLS host (default: start a local one)")
    parser.add_argument("--ca", help="CA file the host's certificate must chain to")
    parser.add_argument("--cert", help="our client certificate (PEM)")
    parser.add_argument("--key", help="our client certificate's key (PEM)")
    args = parser.parse_args(argv)
    if args.host:
        talk(args.host, args.ca, args.cert, args.key)
        return
    with tempfile.TemporaryDirectory() as folder:
        certs = make_certs(Path(folder))
        tls = server_context(certfile=certs["server_cert"], keyfile=certs["server_key"], client_cafile=certs["ca"])
        with geviso.MockHost(("127.0.0.1", 0), spec, tls=tls) as host:
            host_address = "%s:%d" % host.address
            print(f"TLS mock host on {host_address}, client certificates required")
            talk(host_address, certs["ca"], certs["client_cert"], certs["client_key"])
            print(f"host saw: {host.stats.summary()}")


if __name__ == "__main__":
    main()
