# SPDX-License-Identifier: MIT
"""Throw-away certificates for the TLS tests, made with the openssl CLI at test time."""
import os
import subprocess


def _run(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make(dir):
    """In `dir`: ca.{crt,key}, other-ca.crt, server.{crt,key} (localhost),
    client.{crt,key}, expired.{crt,key}. Returns dir."""
    os.makedirs(dir, exist_ok=True)
    os.chmod(dir, 0o755)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        _run("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", "2",
             "-subj", f"/CN=mqttbridge test {ca}", cwd=dir)
    with open(os.path.join(dir, "server.ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    with open(os.path.join(dir, "client.ext"), "w") as f:
        f.write("extendedKeyUsage=clientAuth\n")
    for name, ext in (("server", "server.ext"), ("client", "client.ext")):
        _run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj",
             f"/CN={'localhost' if name == 'server' else 'bridge-client'}", cwd=dir)
        _run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", ext, cwd=dir)
    # An expired server certificate: `openssl ca` can set dates in the past.
    os.makedirs(os.path.join(dir, "db"), exist_ok=True)
    open(os.path.join(dir, "db", "index.txt"), "w").close()
    with open(os.path.join(dir, "db", "serial"), "w") as f:
        f.write("1000\n")
    with open(os.path.join(dir, "ca.cnf"), "w") as f:
        f.write("[ca]\ndefault_ca=d\n[d]\ndatabase=db/index.txt\nserial=db/serial\n"
                "new_certs_dir=db\ndefault_md=sha256\npolicy=p\ncopy_extensions=copy\n"
                "[p]\ncommonName=supplied\n")
    _run("req", *ec, "-keyout", "expired.key", "-out", "expired.csr", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", cwd=dir)
    _run("ca", "-batch", "-config", "ca.cnf", "-cert", "ca.crt", "-keyfile", "ca.key",
         "-in", "expired.csr", "-out", "expired.crt", "-startdate", "20200101000000Z",
         "-enddate", "20200102000000Z", cwd=dir)
    for f in os.listdir(dir):
        p = os.path.join(dir, f)
        if os.path.isfile(p):
            # mosquitto (its own user) reads the server keys; the daemon insists that its
            # client key is private.
            os.chmod(p, 0o600 if f == "client.key" else 0o644)
    return dir
